"""The app's pages, in navigation order: one definition for the navigation (explorer.py) and routing (ui.routing)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PageSpec:
    """A page: ``name`` is its file name in pages/ and its URL path; ``title`` and ``icon`` show in the navigation."""

    name: str
    title: str
    icon: str

    @property
    def path(self) -> str:
        return f"pages/{self.name}.py"


PAGES: tuple[PageSpec, ...] = (
    PageSpec("overview", "Overview", ":material/home:"),
    PageSpec("grid", "Channel grid", ":material/grid_view:"),
    PageSpec("dynamics", "Dynamics", ":material/show_chart:"),
    PageSpec("gates", "SE gates", ":material/tune:"),
    PageSpec("weights", "Weights", ":material/fitness_center:"),
    PageSpec("compare", "Compare runs", ":material/compare:"),
    PageSpec("inspector", "Inspector", ":material/search:"),
    PageSpec("train", "Train", ":material/model_training:"),
)
#: The page a bare URL opens.
DEFAULT_PAGE = "overview"
BY_NAME: dict[str, PageSpec] = {p.name: p for p in PAGES}
