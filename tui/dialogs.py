"""Modal dialogs: a yes/no question before a destructive action, and the job-file prompt."""

from __future__ import annotations

from pathlib import Path

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label

from farm.contracts.domain import JobSpec
from farm.contracts.errors import InvalidInput
from farm.jobs.jobspec import load_job_file
from tui.format import plain


class ConfirmScreen(ModalScreen[bool]):
    """Asks before an action that loses work (cancel a job, drain a node); No is the default."""

    BINDINGS = [
        Binding("y", "answer(True)", "Yes"),
        Binding("n,escape", "answer(False)", "No"),
    ]

    def __init__(self, question: str) -> None:
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(plain(self.question), classes="question")
            with Horizontal(classes="buttons"):
                yield Button("Yes", variant="error", id="yes")
                yield Button("No", variant="primary", id="no")

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


class SubmitScreen(ModalScreen[JobSpec | None]):
    """Asks for a TOML job file and validates it here, so a typo is answered with farm's one-line
    message while the path can still be corrected."""

    BINDINGS = [Binding("escape", "dismiss(None)", "Close")]

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label("Submit a job file (TOML):", classes="question")
            yield Input(placeholder="path/to/job.toml", id="path")
            yield Label("", id="error")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        try:
            spec = load_job_file(Path(event.value.strip()).expanduser())
        except InvalidInput as e:
            self.query_one("#error", Label).update(plain(e))  # not markup: fields read "prompts[0]"
            return
        self.dismiss(spec)
