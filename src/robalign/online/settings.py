"""The `online:` config section: how the online methods (sail, oracle_robust) sample and label their pairs.

Its own module (importing `robalign.online` loads nothing else), not in `robalign.config`, so that the
online methods can take its defaults without importing the config (which looks methods up in the registry:
that would close an import circle).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from robalign.settings import check, setting


@dataclass
class OnlineConfig:
    """The `online:` section: how the online methods (sail, oracle_robust) generate and label their pairs."""

    oracle: str = setting("", "Preference oracle of generated pairs (the `build_oracle` grammar, e.g. "
                          "'bt:verifiable+flip:0.1'); empty = the method's default: 'bt:length' for sail "
                          "(works on any prompt), 'bt:length+adversarial:0.1' for oracle_robust.")
    temperature: float = setting(0.9, "Sampling temperature of online generations (0 = greedy).")
    top_p: float = setting(1.0, "Nucleus mass of online generations (1.0 = the full distribution).")
    max_new_tokens: int = setting(64, "Most tokens per generated response.")

    def validate(self):
        check(self.temperature >= 0 and math.isfinite(self.temperature), "online.temperature", "must be >= 0")
        check(0 < self.top_p <= 1, "online.top_p", "must be in (0, 1]")
        check(self.max_new_tokens >= 1, "online.max_new_tokens", "must be >= 1")
        if self.oracle:
            from robalign.oracles import build_oracle

            build_oracle(self.oracle)  # raises ConfigError naming the valid choices
