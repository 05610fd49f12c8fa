"""What a run is asked to do, and the Beam runner it runs on."""

from __future__ import annotations

from dataclasses import dataclass, field

from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions

from vlpipe.errors import VlpipeError
from vlpipe.images.decode import DEFAULT_MAX_PIXELS, Filters
from vlpipe.images.export import ExportPolicy
from vlpipe.models.prompting import Prompting
from vlpipe.outputs.formats import output_format
from vlpipe.storage import DEFAULT_RETRIES

DASK_RUNNER = "apache_beam.runners.dask.dask_runner.DaskRunner"
RUNNER_ALIASES = {"dask": DASK_RUNNER, "daskrunner": DASK_RUNNER}


@dataclass
class RunConfig:
    source: str
    output: str
    captioner: str = "mini"
    embedder: str = "mini"
    batch_size: int = 32
    max_caption_tokens: int = 30
    device: str = "auto"
    precision: str = "auto"
    backend: str = "auto"  # vlpipe.models.backends: the CPU runtime of vlpipe-mini's tower
    decode_threads: int = 4
    shard_size: int = 1000
    workers: int = 1
    float16: bool = True
    max_pixels: int = DEFAULT_MAX_PIXELS
    min_size: int = 0  # skip images whose shorter side is under this (px); 0: off
    max_aspect: float = 0.0  # skip images whose longer/shorter side ratio is above this; 0: off
    columns: tuple[str, ...] | None = None  # source columns to carry through (None: all)
    thumbnail_px: int = 0  # store a JPEG thumbnail of this size per row; 0: none
    output_format: str = "parquet"  # a name in vlpipe.outputs.formats.FORMATS
    scores: tuple[str, ...] = ()  # --score NAME=SPEC texts (vlpipe.models.scorers)
    keep_metadata: bool = False  # exported image bytes as read (default: metadata stripped)
    detect_faces: bool = False  # faces and face_boxes columns
    blur_faces: bool = False  # blur faces in exported images and thumbnails (implies detect)
    overwrite: bool = False
    retry_failed: bool = False
    shared_output: bool = False  # the user says a local --output is a mount every worker sees
    build_index: bool = True
    progress: bool = True
    storage_retries: int = DEFAULT_RETRIES  # attempts per storage request (vlpipe.storage)
    take_over: bool = False  # take the output's lease from a run that still holds it
    beam_args: list[str] = field(default_factory=list)
    prompting: Prompting = field(default_factory=Prompting)  # --prompt, --ask, --candidates

    def __post_init__(self) -> None:
        if self.blur_faces:
            self.detect_faces = True  # the boxes to blur come from the same pass

    def validate(self) -> None:
        checks = [
            (self.batch_size >= 1, "--batch-size must be at least 1"),
            (self.max_caption_tokens >= 1, "--max-caption-tokens must be at least 1"),
            (self.prompting.candidates >= 1, "--candidates must be at least 1"),
            (
                (self.prompting.max_image_pixels or 1) >= 1,
                "--max-image-pixels must be at least 1",
            ),
            (self.decode_threads >= 1, "--decode-threads must be at least 1"),
            (self.shard_size >= 1, "--shard-size must be at least 1"),
            (self.workers >= 1, "--workers must be at least 1"),
            (self.storage_retries >= 1, "--storage-retries must be at least 1"),
            (self.max_pixels >= 1, "--max-pixels must be at least 1"),
            (self.min_size >= 0, "--min-size must be 0 (off) or more"),
            (self.max_aspect == 0 or self.max_aspect >= 1, "--max-aspect must be 0 (off) or >= 1"),
            (0 <= self.thumbnail_px <= 4096, "--save-thumbnails must be 1..4096 px"),
            (
                not (self.captioner == "none" and self.embedder == "none"),
                "--captioner none and --embedder none leave nothing to do: keep one",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise VlpipeError(message)
        fmt = output_format(self.output_format)  # an unknown name fails here, in one line
        if fmt.check:
            fmt.check(self.output)
        self.score_specs()  # a malformed --score fails here, in one line
        check_beam_args(normalize_runner(self.beam_args))  # a typo fails before any work
        runner = remote_runner(self.beam_args)
        if runner and is_local_path(self.output) and not self.shared_output:
            raise VlpipeError(
                f"--output {self.output} is a local path, but the {runner} runs its workers on"
                " other machines, which cannot write there: use a shared URL (s3://, gs://) or"
                " pass --shared-output if every worker mounts this path"
            )

    def score_specs(self) -> list:
        from vlpipe.models.scorers import parse_scores
        from vlpipe.schema import RESERVED_COLUMNS

        return parse_scores(self.scores, RESERVED_COLUMNS | set(self.prompting.columns()))

    def score_fields(self) -> tuple:
        """The Arrow fields of the --score columns (float32)."""
        import pyarrow as pa

        return tuple(pa.field(s.name, pa.float32()) for s in self.score_specs())

    def filters(self) -> Filters:
        return Filters(self.min_size, self.max_aspect, self.max_pixels)

    def mode(self) -> dict:
        """What the run produces: recorded in the manifest, read by index, search and serve."""
        return {"captions": self.captioner != "none", "embeddings": self.embedder != "none"}

    def model_config(self) -> dict:
        """What must match for a rerun to add to an existing output directory."""
        return {
            "captioner": self.captioner,
            "embedder": self.embedder,
            "max_caption_tokens": self.max_caption_tokens,
            "embedding_dtype": "float16" if self.float16 else "float32",
            **self.prompting.key(),  # only what differs from the defaults: older runs match
            **({"scores": list(self.scores)} if self.scores else {}),
            **({"detect_faces": True} if self.detect_faces else {}),  # its parts have face columns
        }

    def export_policy(self) -> ExportPolicy:
        """What outputs that copy image bytes keep of them."""
        return ExportPolicy(keep_metadata=self.keep_metadata, blur_faces=self.blur_faces)


#: runners whose workers run in the launching process or on its machine
LOCAL_RUNNERS = frozenset(
    {"directrunner", "fnapirunner", "bundlebaseddirectrunner", "switchingdirectrunner"}
)


def remote_runner(args: list[str]) -> str | None:
    """The name of a runner that runs workers elsewhere, or None for an in-process one."""
    name = PipelineOptions(normalize_runner(args)).get_all_options().get("runner")
    if not name:
        return None
    short = str(name).rsplit(".", 1)[-1]
    return None if short.lower() in LOCAL_RUNNERS else short


def is_local_path(output: str) -> bool:
    return "://" not in output or output.startswith(("file://", "local://"))


def normalize_runner(args: list[str]) -> list[str]:
    """`--runner dask` is short for the DaskRunner's full class path, which Beam requires."""
    out: list[str] = []
    for arg in args:
        if arg.startswith("--runner="):
            name = arg.split("=", 1)[1]
            arg = "--runner=" + RUNNER_ALIASES.get(name.lower(), name)
        elif out and out[-1] == "--runner":
            arg = RUNNER_ALIASES.get(arg.lower(), arg)
        out.append(arg)
    return out


def check_beam_args(args: list[str]) -> None:
    """Beam silently discards options it does not know; a typo in a flag must fail instead."""
    import difflib

    from apache_beam.options.pipeline_options import _BeamArgumentParser

    if any(DASK_RUNNER in a for a in args):
        import apache_beam.runners.dask.dask_runner  # noqa: F401 - registers DaskOptions

    parser = _BeamArgumentParser(allow_abbrev=False)
    for cls in {str(c): c for c in PipelineOptions.__subclasses__()}.values():
        cls._add_argparse_args(parser)
    _, unknown = parser.parse_known_args(args)
    if unknown:
        known = [o for action in parser._actions for o in action.option_strings]
        name = unknown[0].split("=", 1)[0]
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise VlpipeError(f"unknown option {name}: not a vlpipe or Beam pipeline option{hint}")


def dask_partitions(args: list[str], n_shards: int | None) -> list[str]:
    """One Dask bag partition per shard unless the user chose: the DaskRunner's default of ~128
    elements per partition would put every shard of a run in one partition, on one worker."""
    chosen = any(a.startswith(("--dask_npartitions", "--dask_partition_size")) for a in args)
    if n_shards is None or chosen or not any(DASK_RUNNER in a for a in args):
        return args
    return [*args, f"--dask_npartitions={n_shards}"]


def make_pipeline(config: RunConfig, n_shards: int | None = None):
    """An explicit in-process runner by default (Beam's default first tries to download Prism,
    which fails offline); any `--runner` and other Beam options pass through."""
    import apache_beam as beam

    args = dask_partitions(normalize_runner(config.beam_args), n_shards)
    check_beam_args(args)
    options = PipelineOptions(args)
    runner_name = options.get_all_options().get("runner")
    if runner_name:
        try:
            return beam.Pipeline(options=options)
        except (ValueError, ImportError) as exc:
            raise VlpipeError(f"cannot use runner {runner_name!r}: {exc}") from exc
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner

    direct = options.view_as(DirectOptions)
    if config.workers > 1:
        direct.direct_running_mode = "multi_processing"
        direct.direct_num_workers = config.workers
    else:
        direct.direct_running_mode = "in_memory"
        direct.direct_num_workers = 1
    return beam.Pipeline(runner=FnApiRunner(), options=options)
