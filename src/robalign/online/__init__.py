"""What the online methods (`robalign.methods.sail`, `robalign.methods.oracle_robust`) share besides their
base class (`robalign.methods.online`): the randomness of a micro-step (`draws`), sampling pairs from the
policy (`sampling`), the record of every generated pair (`generations`) and the `online:` config section
(`settings`)."""
