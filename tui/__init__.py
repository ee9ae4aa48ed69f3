"""The Textual dashboard (`farm tui`, `farm demo --tui`): every node and job at a glance, and the
queue steered from the keyboard. It talks to the farm only through `farm.contracts.control.FarmService`, so
the same app runs on an embedded farm, over gRPC, and against a fake in tests.

`tui.app.make_app` builds it; this package imports nothing itself, so `farm --help` never loads
Textual.
"""
