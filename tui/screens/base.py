"""What every live screen shares: how it follows the store, and how it reaches the app."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from textual.screen import Screen

from tui.store import Changes

if TYPE_CHECKING:
    from tui.app import FarmApp


class LiveScreen(Screen[None]):
    """A screen drawn from `FarmApp.store`.

    The app calls `sync(changes)` on the screens of the current stack after each update; a screen that
    comes back into view (another mode was shown meanwhile) syncs everything, since it missed updates.
    """

    @property
    def farm(self) -> FarmApp:
        return cast("FarmApp", self.app)

    def sync(self, changes: Changes | None) -> None:
        """Redraw what `changes` touched; `None`: anything may have changed."""

    def on_screen_resume(self) -> None:
        self.sync(None)
