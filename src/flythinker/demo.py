"""`flythinker demo` (work in progress)."""


def demo_command() -> None:
    """Run the whole method end to end on the embedded synthetic data."""
    raise NotImplementedError("demo is being written")
