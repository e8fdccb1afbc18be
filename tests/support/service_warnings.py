"""The ``warn`` callback services take, as a list the tests can read."""


class Warnings(list):
    """A services' ``warn`` that keeps the (what, where) pairs it is given."""

    def __call__(self, what: str, where: str | None) -> None:
        self.append((what, where))
