"""The in-memory preference pair, before tokenisation."""

from __future__ import annotations

from dataclasses import dataclass, field

# A chat message list, e.g. [{"role": "user", "content": "hi"}].
Messages = list[dict[str, str]]
Text = str | Messages


@dataclass
class PreferencePair:
    """One observed preference: `chosen` was preferred to `rejected` for `prompt`.

    `prompt` is a string (raw text, no template) or a message list (chat template applied at
    tokenisation). `chosen`/`rejected` are completion strings, or message lists holding the
    assistant turn(s) that follow the prompt. Optional fields are carried through training and
    evaluation unchanged.
    """

    prompt: Text
    chosen: Text
    rejected: Text
    id: str = ""
    is_flipped: bool | None = None
    chosen_score: float | None = None
    rejected_score: float | None = None
    extra: dict = field(default_factory=dict)

    def flipped(self) -> PreferencePair:
        """The same pair with chosen and rejected swapped, marked as flipped (toggles the flag)."""
        return PreferencePair(
            prompt=self.prompt,
            chosen=self.rejected,
            rejected=self.chosen,
            id=self.id,
            is_flipped=not bool(self.is_flipped),
            chosen_score=self.rejected_score,
            rejected_score=self.chosen_score,
            extra=dict(self.extra),
        )

    def to_row(self) -> dict:
        """A JSON-serialisable row with the standard column names (None fields omitted)."""
        row = {"prompt": self.prompt, "chosen": self.chosen, "rejected": self.rejected}
        if self.id:
            row["id"] = self.id
        for key in ("is_flipped", "chosen_score", "rejected_score"):
            value = getattr(self, key)
            if value is not None:
                row[key] = value
        row.update(self.extra)
        return row
