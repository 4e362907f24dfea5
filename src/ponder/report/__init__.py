"""Reports over search outputs: ``viewer`` writes one self-contained HTML page for a tree or a run file."""

from .viewer import view

__all__ = ["view"]
