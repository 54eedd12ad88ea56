"""The `robalign` command line. A user mistake prints one message on stderr and exits with code 2."""

from __future__ import annotations

import argparse
import difflib
import faulthandler
import json
import logging
import os
import re
import sys

from robalign import progress
from robalign.errors import UserError

# Short flags for the common knobs; every config key is also a flag of its own.
COMMON_FLAGS = {
    "--model": "model.name", "--data": "data.train", "--eval-data": "data.eval", "--method": "method.name",
    "--beta": "method.beta", "--max-steps": "train.max_steps", "--batch-size": "train.batch_size",
    "--grad-accum": "train.grad_accum", "--lr": "train.lr", "--max-length": "data.max_length",
    "--lora-r": "model.lora_r", "--output-dir": "train.output_dir", "--seed": "train.seed",
}


# Numbers argparse would take for flags: `--lr -1e-5` must reach validation (its default pattern knows only
# -1 and -1.5, so `-1e-5` became "expected one argument").
_NEGATIVE_NUMBER = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$|^-(inf|infinity|nan)$", re.IGNORECASE)


class _Parser(argparse.ArgumentParser):
    """argparse without prefix abbreviations (`--max-step` is not `--max-steps`), with negative numbers as
    values, and mistakes raised as `UserError` (one "robalign: error:" line, exit 2) that suggest the flag
    a misspelt one was probably meant to be."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = _NEGATIVE_NUMBER

    def error(self, message):
        where = self.prog.removeprefix("robalign").strip()
        raise UserError(f"{where}: {message}" if where else message)

    def parse_args(self, args=None, namespace=None):
        args = sys.argv[1:] if args is None else list(args)
        # Unknown flags first: argparse would otherwise report a required flag as missing, or take the
        # misspelt flag's value for the config file, and never name the misspelt flag.
        command = next((a for a in args if not a.startswith("-")), None)
        parser = self._subparser(command)
        unknown = _unknown_flags(args, parser)
        if unknown:
            parser.error("; ".join(_unrecognized(flag, parser) for flag in unknown))
        ns, extras = self.parse_known_args(args, namespace)
        if extras:
            parser.error(f"unrecognized arguments: {' '.join(extras)}")
        return ns

    def _subparser(self, command):
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction) and command in action.choices:
                return action.choices[command]
        return self


def _known_flags(parser: argparse.ArgumentParser) -> list[str]:
    return [s for a in parser._actions for s in a.option_strings if s.startswith("--")]


def _unknown_flags(args: list[str], parser: argparse.ArgumentParser) -> list[str]:
    """The `--flag` (or `--flag=value`) arguments `parser` does not define, up to a `--` separator."""
    known = set(_known_flags(parser))
    args = args[:args.index("--")] if "--" in args else args
    return [a for a in args if a.startswith("--") and a.split("=", 1)[0] not in known]


def _unrecognized(arg: str, parser: argparse.ArgumentParser) -> str:
    """'unrecognized argument --max-step (did you mean --max-steps?)': the flags it abbreviates (abbreviations
    are not accepted), else the closest spelling, if any is close."""
    flag, known = arg.split("=", 1)[0], _known_flags(parser)
    close = [k for k in known if k.startswith(flag)][:3] or difflib.get_close_matches(flag, known, n=1, cutoff=0.6)
    return f"unrecognized argument {flag}" + (f" (did you mean {' or '.join(close)}?)" if close else "")


def _bool(text: str) -> bool:
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _add_progress_flag(p) -> None:
    """`--progress false` on every subcommand (train has it as the config key train.progress)."""
    if not any("--progress" in a.option_strings for a in p._actions):
        p.add_argument("--progress", type=_bool, nargs="?", const=True, default=True, metavar="BOOL",
                       help="show progress bars (false: none, also the libraries' model-loading bars)")


def _train_parser(sub):
    from robalign.config import describe_fields, method_section_keys
    from robalign.evaluate import ACCURACY_EXPLAINED

    p = sub.add_parser("train", help="train a policy on preference data",
                       description="Train with a YAML config and/or flags; flags override the file. Every "
                                   "config key is a flag, as --section.key or, where unambiguous, --key. "
                                   "Relative paths in the YAML file are read from the file's folder.",
                       epilog=f"Held-out metrics. {ACCURACY_EXPLAINED}")
    p.add_argument("config", nargs="?", help="YAML config file")
    p.add_argument("--resume", action="store_true", help="continue the run in the output directory from its last "
                   "complete checkpoint, with its own settings")
    p.add_argument("--overwrite", action="store_true", help="replace a run the output directory already holds "
                   "(without it, or --resume, starting there is refused)")
    p.add_argument("--skip-invalid", dest="data.skip_invalid", nargs="?", const="true", default=None,
                   help="skip and count invalid data rows instead of stopping")
    taken = {"--resume", "--overwrite", "--skip-invalid", *COMMON_FLAGS}
    for flag, key in COMMON_FLAGS.items():
        p.add_argument(flag, dest=key, default=None, metavar="V", help=f"sets {key}")
    rows = describe_fields()
    counts: dict[str, int] = {}
    for key, _, _ in rows:
        counts[key.split(".")[1]] = counts.get(key.split(".")[1], 0) + 1
    for key, help_, default in rows:
        bare = "--" + key.split(".")[1].replace("_", "-")
        flags = [f"--{key}", f"--{key.replace('_', '-')}"]
        if counts[key.split(".")[1]] == 1 and bare not in taken:
            flags.append(bare)
        flags = [f for f in dict.fromkeys(flags) if f not in taken]
        taken.update(flags)
        p.add_argument(*flags, dest=key, default=None, nargs="?", const="true", metavar="V",
                       help=f"{help_} [default: {default}]")
    # A section named after a method holds more of its parameters (older configs' gapo:, sail:, ...): --gapo.radius
    # is --method.radius, listed above.
    for key in method_section_keys():
        flags = [f for f in dict.fromkeys([f"--{key}", f"--{key.replace('_', '-')}"]) if f not in taken]
        taken.update(flags)
        if flags:
            p.add_argument(*flags, dest=key, default=None, nargs="?", const="true", metavar="V",
                           help=argparse.SUPPRESS)
    return p


def cmd_train(args) -> int:
    from pathlib import Path

    from robalign.config import load_config
    from robalign.rundir import refuse_existing
    from robalign.trainer import Trainer

    overrides = {k: v for k, v in vars(args).items() if "." in k and v is not None}
    cfg = load_config(args.config, overrides)
    if not cfg.train.progress:
        progress.silence()
    # Before anything loads: a run may start in the output directory.
    refuse_existing(Path(cfg.train.output_dir), resume=args.resume, overwrite=args.overwrite)
    global _RUN_DIR
    _RUN_DIR = Path(cfg.train.output_dir)
    trainer = Trainer(cfg)
    try:
        summary = trainer.train(resume=args.resume, overwrite=args.overwrite)
        trainer.acc.wait_for_everyone()  # ranks leave together, after the main one has written final/
    finally:
        # The process group goes with the run, also for library callers that go on in this process.
        trainer.acc.end_training()
    if trainer.acc.is_main_process:
        _print_summary(summary, cfg.train.output_dir)
    return 0


_RUN_DIR = None  # the run `robalign train` is training, for the message when it is interrupted


def _interrupted() -> str:
    from robalign.checkpoint import list_checkpoints

    if _RUN_DIR is None:
        return "robalign: interrupted"
    found = list_checkpoints(_RUN_DIR / "checkpoints") if (_RUN_DIR / "checkpoints").is_dir() else []
    if not found:
        return f"robalign: interrupted before the first checkpoint of {_RUN_DIR}; nothing to resume from"
    return (f"robalign: interrupted; last complete checkpoint: {found[-1]}. Continue the run with the same "
            "command and --resume")


def _print_summary(summary: dict, out_dir: str):
    if summary.get("finished_before"):
        print(f"the run in {out_dir} had already finished (step {summary['steps']}); nothing was trained")
    start, final = summary.get("start", {}), summary.get("final", {})
    print(f"\nsteps: {summary['steps']}   skipped batches: {summary['skipped_batches']}   "
          f"processes: {summary.get('processes', 1)}")
    keys = [k for k in ("eval/accuracy_h", "eval/accuracy_M", "eval/margin_h", "eval/margin_M") if k in final]
    if keys:
        print(f"{'held-out metric':<20}{'before':>10}{'after':>10}")
        for k in keys:
            print(f"{k:<20}{start.get(k, float('nan')):>10.4f}{final[k]:>10.4f}")
        print(_SUMMARY_LEGEND)
    print(f"run written to {out_dir}")


# Under the summary table: what its rows mean, in brief (the full text is in `robalign train --help`).
_SUMMARY_LEGEND = ("accuracy_h / accuracy_M: share of held-out pairs (clean labels) ranked as labelled by the "
                   "reference log-ratio margin h / by the\nlength-normalised, reference-free margin M; a tie counts "
                   "half, so 0.5 is chance. margin_*: their mean. (robalign train --help)")


def cmd_noise(args) -> int:
    from robalign.data import inject_noise, load_pairs, write_pairs

    if not 0 <= args.rate <= 1:
        raise UserError(f"noise: --rate must be in [0, 1], got {args.rate}")
    read = load_pairs(args.data, skip_invalid=args.skip_invalid)
    noisy = inject_noise(read.pairs, args.kind, args.rate, args.seed)
    write_pairs(noisy, args.out)
    if read.skipped:
        print(read.skip_summary())
    flipped = sum(bool(p.is_flipped) for p in noisy)
    print(f"wrote {len(noisy)} pairs to {args.out}: {flipped} flipped ({args.kind}, rate {args.rate}, seed {args.seed})")
    return 0


def cmd_eval(args) -> int:
    from robalign.config import build_config
    from robalign.data import clean_labels, load_pairs
    from robalign.data.tokenize import tokenize_pairs
    from robalign.evaluate import PreferenceEvaluator
    from robalign.models import load_model_and_tokenizer
    from robalign.reference import FrozenCopyReference

    # Settings and data first: a mistake in either is reported before any model loads.
    if args.batch_size < 1 or args.limit < 0 or args.prompts < 1 or args.max_new_tokens < 1:
        raise UserError("eval: --batch-size, --prompts and --max-new-tokens must be >= 1 and --limit >= 0")
    if args.gold and not args.reference:
        raise UserError("eval: --gold needs --reference (the model the win rate and KL compare against)")
    dc = build_config({"data": {"max_length": args.max_length}}).data
    if args.data == "verifiable":  # the built-in task's held-out pairs (seed 10_000, as the sweeps use)
        from robalign.tasks.verifiable import make_preference_pairs

        pairs = make_preference_pairs(args.limit or args.prompts, 10_000)
    else:
        read = load_pairs(args.data, skip_invalid=args.skip_invalid)
        if read.skipped:
            print(read.skip_summary(), file=sys.stderr)  # stdout is the JSON result
        pairs = read.pairs[: args.limit or None]
    pairs, restored = clean_labels(pairs)  # injected flips are scored against the true label
    model, tok = load_model_and_tokenizer(args.model)
    ref = ref_model = None
    if args.reference:
        ref_model, _ = load_model_and_tokenizer(args.reference)
        ref = FrozenCopyReference(ref_model)
    data, skipped = tokenize_pairs(tok, pairs, max_length=dc.max_length, max_prompt_length=dc.prompt_budget,
                                   skip_invalid=True)
    result = PreferenceEvaluator(data, tok.pad_token_id, reference=ref, batch_size=args.batch_size).evaluate(model)
    result["eval/skipped_too_long"] = skipped
    result["eval/flips_undone"] = restored
    if args.gold:
        result.update(_generation_metrics(args, model, tok, ref_model, pairs, dc.prompt_budget))
    print(json.dumps(result, indent=2))
    return 0


def _generation_metrics(args, model, tok, ref_model, pairs, max_prompt_length: int) -> dict:
    """`eval --gold`: gold reward, win rate and KL of generations on the data's first --prompts prompts."""
    from robalign.evaluate_generation import generation_eval
    from robalign.oracles import REWARDS

    if args.data == "verifiable":
        from robalign.tasks.verifiable import make_prompts

        prompts = [[{"role": "user", "content": p.text}] for p in make_prompts(args.prompts, seed=10_000)]
    else:
        unique = {json.dumps(p.prompt): p.prompt for p in pairs}
        prompts = list(unique.values())[:args.prompts]
    try:
        out = generation_eval(model, ref_model, tok, prompts, REWARDS[args.gold](), batch_size=args.batch_size,
                              max_new_tokens=args.max_new_tokens, max_prompt_length=max_prompt_length)
    except ValueError as err:  # e.g. the verifiable checker on prompts without an instruction
        raise UserError(f"eval --gold {args.gold}: {err}") from None
    out.pop("generations")  # texts are for callers that store them; stdout gets the metrics
    return out


def cmd_config_keys(args) -> int:
    from robalign.config import describe_fields

    for key, help_, default in describe_fields():
        print(f"--{key:<34} {help_} [default: {default}]")
    return 0


def build_parser():
    parser = _Parser(prog="robalign", description="Robust preference alignment of language models.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _train_parser(sub).set_defaults(func=cmd_train)
    p = sub.add_parser("noise", help="inject flip/length/margin noise into a preference dataset")
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--kind", choices=["flip", "length", "margin"], default="flip")
    p.add_argument("--rate", type=float, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-invalid", action="store_true")
    p.set_defaults(func=cmd_noise)
    from robalign.evaluate import ACCURACY_EXPLAINED

    p = sub.add_parser("eval", help="held-out preference accuracy and margins of a model",
                       description="Prints the held-out metrics of --model on --data as JSON: eval/accuracy_M "
                                   "and eval/margin_M, plus eval/accuracy_h and eval/margin_h with --reference.",
                       epilog=ACCURACY_EXPLAINED)
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--reference", default="", help="reference model for the log-ratio margin h")
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--limit", type=int, default=0)
    p.add_argument("--skip-invalid", action="store_true")
    p.add_argument("--gold", choices=["verifiable", "length", "sentiment"], default=None,
                   help="also evaluate generations against --reference under this gold reward "
                        "(--data verifiable: the built-in task's held-out prompts)")
    p.add_argument("--prompts", type=int, default=32, help="held-out prompts for --gold")
    p.add_argument("--max-new-tokens", type=int, default=64, help="most tokens per generation for --gold")
    p.set_defaults(func=cmd_eval)
    sub.add_parser("config-keys", help="list every config key with its help").set_defaults(func=cmd_config_keys)
    for register in _plugins():
        register(sub)
    for p in sub.choices.values():
        _add_progress_flag(p)
    return parser


def _plugins():
    """Subcommands defined next to their feature (demo, score, bench)."""
    import importlib
    import importlib.util

    names = ("robalign.experiments.demo", "robalign.scoring", "robalign.experiments.cli")
    return [importlib.import_module(n).register_cli for n in names if importlib.util.find_spec(n)]


def _is_distributed_worker() -> bool:
    """This process is one rank of a multi-process launch (torchrun, accelerate launch)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def _leave_without_teardown(code: int):
    """Ends a rank of a finished multi-process run without the interpreter's teardown.

    A rank can abort in the teardown after its run is complete ("terminate called without an active
    exception", SIGABRT, pytorch/pytorch#179291), even with its process group destroyed, and the launcher
    then fails the whole run. Everything of the run is written by now (checkpoints and final/ before the
    last barrier, metrics closed), so only the standard streams and logging need flushing.
    """
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=os.environ.get("ROBALIGN_LOG", "WARNING"), format="%(levelname)s %(name)s: %(message)s")
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if getattr(args, "progress", True) is False:
            progress.silence()
        if argv is None and args.command == "train":
            from robalign.launch import relaunch_if_needed

            code = relaunch_if_needed(sys.argv[1:])  # accelerate launch --cpu --num_processes N
            if code is not None:
                return code
            if _is_distributed_worker():
                faulthandler.enable(sys.__stderr__)  # a rank that dies of a signal shows where it was
                _leave_without_teardown(args.func(args))
        return args.func(args)
    except UserError as err:
        print(f"robalign: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(_interrupted(), file=sys.stderr)
        return 130
    except BrokenPipeError:  # stdout closed early (`robalign ... | head`): stop quietly, as `cat` does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit flush cannot fail again
        return 141


if __name__ == "__main__":
    sys.exit(main())
