"""``edge-cls index``, ``search`` and ``suggest-taxonomy``: from labels to organised collections.

``index`` and ``search`` need LanceDB (``edge-cls[index]``), ``search --text`` also open_clip (the text
tower runs on the indexing host); ``suggest-taxonomy`` needs SciPy (``edge-cls[taxonomy]``) and one
runtime. None of them runs on the device.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from edge_cls.errors import ConfigError

from . import options


def add_parsers(sub: Any) -> None:
    i = sub.add_parser("index", help="store image records (predict --jsonl --embeddings) in an embedded vector "
                       "database (LanceDB)")
    i.add_argument("database", type=Path, help="the index directory (created if missing)")
    i.add_argument("records", nargs="+", help="JSONL files of records ('-': standard input)")
    i.set_defaults(func=_cmd_index)

    s = sub.add_parser("search", help="images like an indexed one, or matching a text, filtered by calibrated scores")
    s.add_argument("database", type=Path, help="an index made by 'edge-cls index'")
    options.add_all(s, "like", "text")
    options.add(s, "artifact", note="with --text: the zero-shot artifact whose embedding space the index holds")
    options.add(s, "clip_model", note="with --text: the CLIP model the zero-shot artifact was built from")
    options.add(s, "clip_pretrained", note="with --text: its weights")
    options.add_all(s, "min_score")
    options.add(s, "limit", default=10, note="default: 10")
    options.add(s, "json")
    s.set_defaults(func=_cmd_search)

    t = sub.add_parser("suggest-taxonomy", help="merge the classes a model confuses most into coarser classes",
                       description="Merge the classes an artifact confuses most on labelled images, step by step "
                       "(agglomerative on the symmetric confusion), print top-1 at each level next to random "
                       "merges of the same group sizes, and write a taxonomy file that --taxonomy takes.")
    t.add_argument("source", type=Path, help="a build directory (its first artifact and data/) or an artifact")
    options.add(t, "check_data", note="here: the labelled images the merges are fitted on; default: the val split")
    options.add(t, "data_dir", note="val/ and test/ splits: fitted on val, judged on test; default: <build>/data")
    options.add_all(t, "groups")
    options.add(t, "output", note="the taxonomy file (.yaml, .json or .csv); default: <build>/suggested_taxonomy.yaml")
    options.add(t, "json")
    t.set_defaults(func=_cmd_suggest)


def _cmd_index(args: argparse.Namespace) -> int:
    from edge_cls.vector_index import ImageIndex, read_records

    index = ImageIndex(args.database)
    added = index.add(read_records(args.records))
    print(f"{args.database}: {added} images added, {index.count} in the index")
    return 0


def _cmd_search(args: argparse.Namespace) -> int:
    from edge_cls.vector_index import ImageIndex

    if (args.like is None) == (args.text is None):
        raise ConfigError("give --like PATH (an indexed image) or --text TEXT (zero-shot artifacts), one of them")
    index = ImageIndex(args.database)
    min_scores = _min_scores(args.min_score or [])
    if args.like is not None:
        hits = index.like(args.like, k=args.limit, min_scores=min_scores)
    else:
        hits = index.similar(_text_vector(args, index), k=args.limit, min_scores=min_scores)
    if args.json:
        print(json.dumps([h.to_dict() for h in hits], indent=2))
    for hit in [] if args.json else hits:
        scores = ", ".join(f"{label} {score:.3f}" for label, score in hit.scores.items())
        print(f"{hit.distance:.4f}  {hit.path}  ({scores})")
    return 0


def _min_scores(items: list[str]) -> dict[str, float]:
    scores = {}
    for item in items:
        label, sep, value = item.rpartition("=")
        try:
            scores[label] = float(value)
        except ValueError:
            sep = ""
        if not sep or not label:
            raise ConfigError(f"--min-score takes LABEL=P (e.g. cat=0.9), got {item!r}")
    return scores


def _text_vector(args: argparse.Namespace, index: Any) -> Any:
    """The text through CLIP's text tower, then through the zero-shot artifact's own embedding space."""
    from edge_cls.artifact.embeddings import ArtifactEmbeddings
    from edge_cls.artifact.manifest import read_artifact

    if args.artifact is None or args.clip_model is None:
        raise ConfigError("--text needs --artifact (the zero-shot artifact) and --clip-model (with --clip-pretrained)")
    manifest, files = read_artifact(args.artifact)
    if manifest.embeddings is None or manifest.embeddings["source"] != "clip-image":
        raise ConfigError(f"{args.artifact} is not a zero-shot artifact with CLIP image embeddings: text queries "
                          "need one (edge-cls zero-shot)")
    space = ArtifactEmbeddings.from_artifact(manifest.embeddings, files)
    if index.space is not None and index.space != space.space:
        raise ConfigError(f"the index holds vectors of another embedding space than {args.artifact}'s")
    from edge_cls.training.clip import text_embeddings

    text = text_embeddings(args.clip_model, args.clip_pretrained, [args.text])
    if text.shape[1] != space.mean.shape[0]:
        raise ConfigError(f"{args.clip_model}'s text embeddings have {text.shape[1]} dimensions, the artifact's "
                          f"image embeddings {space.mean.shape[0]}: use the CLIP model the artifact was built from")
    return space.vectors(text)[0]


def _cmd_suggest(args: argparse.Namespace) -> int:
    from edge_cls.data import labelled_split
    from edge_cls.quality.taxonomy_suggest import artifact_probabilities, default_groups, suggest, write_taxonomy
    from edge_cls.runtimes import load

    artifact, root, output = _suggest_sources(args)
    with load(artifact) as classifier:
        labels = classifier.labels
        fit = artifact_probabilities(classifier, labelled_split(args.check_data or root, split="val", classes=labels))
        held_out = None
        if root is not None and (Path(root) / "test").is_dir():
            held_out = artifact_probabilities(classifier, labelled_split(root, split="test", classes=labels))
    suggestion = suggest(fit, labels, held_out)
    groups = sorted(set(args.groups or [default_groups(len(labels))]), reverse=True)
    if any(g > len(labels) for g in groups):
        raise ConfigError(f"--groups must be at most the number of classes ({len(labels)})")
    path = write_taxonomy(Path(output), suggestion.taxonomy(groups))
    if args.json:
        print(json.dumps({"taxonomy": str(path), "groups": groups, "levels": suggestion.rows()}, indent=2))
        return 0
    print("\n".join(suggestion.markdown(groups)))
    print(f"\nwrote {path} ({', '.join(map(str, groups))} groups): pass it as --taxonomy {path}")
    return 0


def _suggest_sources(args: argparse.Namespace) -> tuple[Path, Path | None, Path]:
    """The artifact, the dataset root (or None) and the output file, from a build or an artifact directory."""
    from edge_cls.artifact.integrity import MANIFEST_NAME

    source = Path(args.source)
    if (source / MANIFEST_NAME).is_file():
        if args.output is None:
            raise ConfigError("give --output FILE (.yaml, .json or .csv) for the suggested taxonomy")
        if args.check_data is None and args.data_dir is None:
            raise ConfigError("give --check-data DIR (labelled images) or --data-dir ROOT (val/ and test/)")
        return source, args.data_dir, args.output
    found = sorted(p for p in (source / "artifacts").glob("*") if (p / MANIFEST_NAME).is_file())
    if not found:
        raise ConfigError(f"{source} is neither an artifact nor a build directory with artifacts/")
    root = args.data_dir or (source / "data" if (source / "data").is_dir() else None)
    if root is None and args.check_data is None:
        raise ConfigError(f"{source} has no data/: give --data-dir ROOT (val/ and test/) or --check-data DIR")
    return found[0], root, args.output or source / "suggested_taxonomy.yaml"
