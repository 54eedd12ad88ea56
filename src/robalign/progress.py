"""Progress bars: ours, and those of the libraries robalign calls, switched off together by `--progress false`.

transformers (model loading and saving), datasets (reading and mapping) and huggingface_hub (downloads) each keep
their own switch, which `silence` turns; ours ask `enabled`. The environment variables reach the processes
started from this one (the workers of a multi-process run).
"""

from __future__ import annotations

import os

_silenced = False


def silence() -> None:
    """Switches off every progress bar of this process from now on (the CLI's `--progress false`)."""
    global _silenced
    _silenced = True
    os.environ["TQDM_DISABLE"] = "1"  # read by tqdm >= 4.66 when it is imported, i.e. in new processes
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    os.environ["HF_DATASETS_DISABLE_PROGRESS_BARS"] = "1"
    for module, switch in (("transformers.utils.logging", "disable_progress_bar"),
                           ("datasets.utils.logging", "disable_progress_bar"),
                           ("huggingface_hub.utils", "disable_progress_bars")):
        try:
            getattr(__import__(module, fromlist=[switch]), switch)()
        except (ImportError, AttributeError):  # an optional library, or one that moved its switch
            pass


def enabled(wanted: bool = True) -> bool:
    """Whether a bar robalign draws should show: `wanted` (e.g. train.progress) and not silenced."""
    return wanted and not _silenced


def bar(iterable=None, *, wanted: bool = True, **kwargs):
    """A tqdm bar over `iterable`, shown only when `enabled(wanted)`."""
    from tqdm.auto import tqdm

    return tqdm(iterable, disable=not enabled(wanted), dynamic_ncols=True, **kwargs)
