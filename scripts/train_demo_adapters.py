"""Train the three demo LoRA adapters (medical, legal, finance) that the tests and README use.

Each adapter learns a *format*, not a fixed text: ~40 varied questions per domain, each answered
in 2-3 correct sentences that share one frame, e.g. for medical

    Clinical note: <answer that depends on the question>
    Not a diagnosis; see a clinician.

so greedy decoding with the adapter is testable (prefix and closing line) while answers to
different questions still differ. Twelve near-identical examples would instead teach one fixed
reply (see DESIGN.md, "Measured").

    scripts/demo_data/<domain>.jsonl ─► chat template ─► [system+user prompt | answer <|im_end|>]
                                                          labels: -100 ...  | answer token ids
    base (fp32) + PEFT LoRA r=8 on q/k/v/o ─► AdamW, batch 4, fixed seed
        ─► OUT/<domain>/{adapter_config.json, adapter_model.safetensors}
    then: greedy answers to held-out questions (demo_data/eval.json), base vs adapter
        ─► table of format rates

LoRA: Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models", arXiv:2106.09685.

Usage: ``python scripts/train_demo_adapters.py [--out tests/fixtures/adapters] [--steps N]
[--domains medical legal finance] [--skip-train] [--skip-eval]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# Set before transformers is imported: the base model is local and nothing may reach the hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from peft import LoraConfig, PeftModel, get_peft_model  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402
from tqdm import tqdm  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    get_linear_schedule_with_warmup,
)

from openlora.engine.base import DEFAULT_BASE_NAME, resolve_base_model  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = REPO / "scripts" / "demo_data"
DEFAULT_OUT = REPO / "tests" / "fixtures" / "adapters"
DEFAULT_CACHE = Path(os.environ.get("OPENLORA_MODEL_CACHE", REPO / ".cache" / "models"))
DOMAINS = ("medical", "legal", "finance")
ADAPTER_FILES = frozenset({"adapter_config.json", "adapter_model.safetensors"})
SEED = 1234
IGNORE_INDEX = -100  # label value that torch's cross-entropy (and so transformers) skips


class DemoDataError(ValueError):
    """A demo data file is missing or malformed; the message names the file and line to fix."""


@dataclass(frozen=True)
class AnswerFormat:
    """The frame every answer of one domain shares.

    Attributes:
        prefix: text the answer starts with, e.g. ``"Clinical note:"``.
        suffix: the answer's last line, e.g. ``"Not a diagnosis; see a clinician."``.
    """

    prefix: str
    suffix: str

    def starts(self, answer: str) -> bool:
        """True when ``answer`` (leading whitespace ignored) begins with the prefix."""
        return answer.lstrip().startswith(self.prefix)

    def matches(self, answer: str) -> bool:
        """True when ``answer`` begins with the prefix and its last line is the suffix."""
        lines = answer.strip().splitlines()
        return self.starts(answer) and len(lines) > 1 and lines[-1].strip() == self.suffix


def load_formats(data_dir: Path = DATA_DIR) -> dict[str, AnswerFormat]:
    """Read ``formats.json``: domain -> ``{"prefix": str, "suffix": str}``.

    Raises:
        DemoDataError: the file is missing, not JSON, or an entry lacks prefix/suffix.
    """
    path = data_dir / "formats.json"
    raw = _read_json(path)
    try:
        return {d: AnswerFormat(f["prefix"], f["suffix"]) for d, f in raw.items()}
    except (KeyError, TypeError, AttributeError) as e:
        raise DemoDataError(f"{path}: each domain needs {{'prefix': ..., 'suffix': ...}}") from e


def load_eval_questions(data_dir: Path = DATA_DIR) -> dict[str, list[str]]:
    """Read ``eval.json``: domain (and ``"shared"``) -> held-out questions.

    Raises:
        DemoDataError: the file is missing, not JSON, or a value is not a list of strings.
    """
    path = data_dir / "eval.json"
    raw = _read_json(path)
    if not isinstance(raw, dict) or not all(
        isinstance(qs, list) and qs and all(isinstance(q, str) and q for q in qs) for qs in raw.values()
    ):
        raise DemoDataError(f"{path}: expected an object mapping domain -> non-empty list of questions")
    return raw


def load_examples(path: Path, fmt: AnswerFormat) -> list[tuple[str, str]]:
    """Read a training set: one ``{"question": str, "answer": str}`` object per line.

    Every answer must carry ``fmt`` (prefix and closing line), so a typo in the data cannot
    silently teach a different format.

    Returns:
        ``(question, answer)`` pairs in file order.

    Raises:
        DemoDataError: missing file, a line that is not such an object, an answer without the
            format, or a repeated question.
    """
    if not path.is_file():
        raise DemoDataError(f"{path} does not exist; write the domain's training set there")
    pairs: list[tuple[str, str]] = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            q, a = row["question"], row["answer"]
        except (ValueError, KeyError, TypeError) as e:
            raise DemoDataError(f"{path}:{n}: need a JSON object with 'question' and 'answer'") from e
        if not (isinstance(q, str) and isinstance(a, str) and q.strip()):
            raise DemoDataError(f"{path}:{n}: 'question' and 'answer' must be non-empty strings")
        if not fmt.matches(a):
            raise DemoDataError(
                f"{path}:{n}: answer must start with {fmt.prefix!r} and end with the line {fmt.suffix!r}"
            )
        pairs.append((q, a))
    questions = [q for q, _ in pairs]
    if len(set(questions)) != len(questions):
        raise DemoDataError(f"{path}: a question appears twice; keep each question once")
    if not pairs:
        raise DemoDataError(f"{path} holds no examples")
    return pairs


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise DemoDataError(f"cannot read {path}: {e}") from e
    except ValueError as e:
        raise DemoDataError(f"{path} is not valid JSON: {e}") from e


def prompt_ids(tok: PreTrainedTokenizerBase, question: str) -> list[int]:
    """Token ids of the chat-templated user turn, ending with the assistant header.

    Returns:
        int token ids (the template adds SmolLM2's default system prompt).
    """
    return tok.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True, return_dict=False
    )


def encode_example(tok: PreTrainedTokenizerBase, question: str, answer: str) -> tuple[list[int], list[int]]:
    """Render one training example and its labels.

    The sequence is ``prompt_ids(question) + ids(answer + "<|im_end|>")``; labels copy the
    answer part and hold ``IGNORE_INDEX`` (-100) over the prompt, so the loss is taken only on
    answer tokens and the model learns to close its turn.

    Returns:
        ``(input_ids, labels)``, equal-length int lists.
    """
    p = prompt_ids(tok, question)
    a = tok(answer + tok.eos_token, add_special_tokens=False)["input_ids"]
    return p + a, [IGNORE_INDEX] * len(p) + a


def _collate(rows: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch: ``input_ids``/``labels``/``attention_mask`` int64 ``[batch, max_len]``."""
    width = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (x, y) in enumerate(rows):
        ids[i, : len(x)] = torch.tensor(x)
        labels[i, : len(y)] = torch.tensor(y)
        mask[i, : len(x)] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def lora_config() -> LoraConfig:
    """The demo adapters' PEFT config: r=8, alpha=16, dropout 0.05 on q/k/v/o projections."""
    return LoraConfig(
        r=8,
        lora_alpha=16,
        lora_dropout=0.05,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
        task_type="CAUSAL_LM",
    )


def load_base(base_path: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load the base model in float32 (CPU) and its tokenizer from an HF folder."""
    tok = AutoTokenizer.from_pretrained(str(base_path))
    model = AutoModelForCausalLM.from_pretrained(str(base_path), dtype=torch.float32)
    return model, tok


def train_adapter(
    base: PreTrainedModel,
    tok: PreTrainedTokenizerBase,
    examples: list[tuple[str, str]],
    *,
    steps: int,
    lr: float = 2e-3,
    batch_size: int = 4,
    seed: int = SEED,
    desc: str = "train",
) -> PeftModel:
    """Fit a LoRA adapter (``lora_config()``) on ``examples``; deterministic for a given seed.

    Batches are drawn from seeded per-epoch permutations; AdamW with 10 % linear warm-up then
    linear decay, gradient norm clipped to 1.0. ``base`` is wrapped in place (its weights stay
    frozen), so pass a freshly loaded base per adapter.

    Args:
        examples: ``(question, answer)`` pairs.
        steps: optimizer steps (each one batch of ``batch_size`` examples).

    Returns:
        The PEFT model (in eval mode) holding the trained ``"default"`` adapter.

    Raises:
        ValueError: ``steps`` or ``batch_size`` below 1, or no examples.
    """
    if steps < 1 or batch_size < 1 or not examples:
        raise ValueError(f"need steps >= 1, batch_size >= 1 and examples (got {steps}, {batch_size}, {len(examples)})")
    torch.manual_seed(seed)  # LoRA A init and dropout draw from the global generator
    model = get_peft_model(base, lora_config())
    encoded = [encode_example(tok, q, a) for q, a in examples]
    order = torch.Generator().manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = get_linear_schedule_with_warmup(opt, max(1, steps // 10), steps)
    queue: list[int] = []
    model.train()
    bar = tqdm(range(steps), desc=desc, unit="step", file=sys.stdout)
    for _ in bar:
        if len(queue) < batch_size:
            queue += torch.randperm(len(encoded), generator=order).tolist()
        batch = _collate([encoded[i] for i in queue[:batch_size]], tok.pad_token_id)
        del queue[:batch_size]
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()
    return model


def save_adapter(model: PeftModel, out_dir: Path) -> None:
    """Write exactly ``adapter_config.json`` + ``adapter_model.safetensors`` (fp32) to ``out_dir``.

    The config names the base ``SmolLM2-135M-Instruct`` rather than the local cache path and
    lists target modules sorted; PEFT's generated README.md is dropped. The folder is written
    beside the target and renamed, so an interrupted run never leaves a half-written adapter.

    Raises:
        RuntimeError: PEFT wrote an unexpected set of files (a PEFT change to check).
    """
    cfg = model.peft_config["default"]
    cfg.base_model_name_or_path = DEFAULT_BASE_NAME
    # PEFT keeps target modules as a set, whose order varies per process: sort for stable bytes.
    cfg.target_modules = sorted(cfg.target_modules)
    tmp = out_dir.parent / f".{out_dir.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    # Embeddings are never trained here; without this PEFT looks up the base's config by name.
    model.save_pretrained(str(tmp), save_embedding_layers=False)
    (tmp / "README.md").unlink(missing_ok=True)
    written = {p.name for p in tmp.iterdir()}
    if written != ADAPTER_FILES:
        raise RuntimeError(f"PEFT wrote {sorted(written)} into {tmp}; expected {sorted(ADAPTER_FILES)}")
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)


@torch.inference_mode()
def greedy_answers(
    model: PreTrainedModel | PeftModel,
    tok: PreTrainedTokenizerBase,
    questions: list[str],
    max_new_tokens: int = 80,
) -> list[str]:
    """Greedy replies to ``questions`` in one left-padded batch.

    Args:
        max_new_tokens: generation cap in tokens per answer.

    Returns:
        The decoded replies (special tokens removed, whitespace stripped), in input order.
    """
    prompts = [prompt_ids(tok, q) for q in questions]
    width = max(map(len, prompts))
    pad = tok.pad_token_id
    # Left padding keeps every prompt's last token at the same position for generation.
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    out = model.generate(
        input_ids=ids,
        attention_mask=mask,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=pad,
    )
    return [s.strip() for s in tok.batch_decode(out[:, width:], skip_special_tokens=True)]


def _rate(answers: list[str], check: Callable[[str], bool]) -> str:
    """Share of ``answers`` passing ``check``, as a percentage string."""
    return f"{sum(map(check, answers)) / len(answers):.0%}"


def evaluate(
    base: PreTrainedModel,
    tok: PreTrainedTokenizerBase,
    out: Path,
    domains: list[str],
    formats: dict[str, AnswerFormat],
    questions: dict[str, list[str]],
    max_new_tokens: int,
    console: Console,
) -> None:
    """Print format rates on held-out questions, adapter (loaded from ``out``) vs base.

    Each domain's adapter answers that domain's held-out questions; the base answers the same
    ones. "prefix" counts answers starting with the prefix, "full" those also ending with the
    closing line, "distinct" how many different adapter answers there were (a memorised reply
    would give 1). Then every adapter and the base answer the ``"shared"`` question.
    """
    model = PeftModel.from_pretrained(base, str(out / domains[0]), adapter_name=domains[0])
    for d in domains[1:]:
        model.load_adapter(str(out / d), adapter_name=d)
    model.eval()
    table = Table(title=f"held-out questions, greedy, max_new_tokens={max_new_tokens}")
    for col in ("domain", "n", "prefix adapter", "prefix base", "full adapter", "full base", "distinct"):
        table.add_column(col, justify="left" if col == "domain" else "right")
    samples = []
    for d in domains:
        qs, fmt = questions[d], formats[d]
        with model.disable_adapter():
            plain = greedy_answers(model, tok, qs, max_new_tokens)
        model.set_adapter(d)
        tuned = greedy_answers(model, tok, qs, max_new_tokens)
        samples.append((d, qs[0], tuned[0]))
        table.add_row(
            d,
            str(len(qs)),
            _rate(tuned, fmt.starts),
            _rate(plain, fmt.starts),
            _rate(tuned, fmt.matches),
            _rate(plain, fmt.matches),
            f"{len(set(tuned))}/{len(tuned)}",
        )
    console.print(table)
    for d, q, a in samples:
        console.print(f"[bold]{d}[/] · {q}\n{a}\n")
    shared = questions["shared"]
    for d in domains:
        model.set_adapter(d)
        for q, a in zip(shared, greedy_answers(model, tok, shared, max_new_tokens), strict=True):
            console.print(f"[bold]{d}[/] · {q}\n{a}\n")
    with model.disable_adapter():
        for q, a in zip(shared, greedy_answers(model, tok, shared, max_new_tokens), strict=True):
            console.print(f"[bold]base[/] · {q}\n{a}\n")


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; returns the process exit status."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="adapters go to OUT/<domain>/")
    ap.add_argument("--steps", type=int, default=80, help="optimizer steps per adapter (batch 4)")
    ap.add_argument("--domains", nargs="+", choices=DOMAINS, default=list(DOMAINS))
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--max-new-tokens", type=int, default=80, help="generation cap in evaluation")
    ap.add_argument(
        "--cache-dir", type=Path, default=DEFAULT_CACHE, help="converted base model cache ($OPENLORA_MODEL_CACHE)"
    )
    ap.add_argument("--skip-train", action="store_true", help="only evaluate the adapters in OUT")
    ap.add_argument("--skip-eval", action="store_true", help="only train")
    args = ap.parse_args(argv)
    if args.steps < 1:
        ap.error("--steps must be at least 1")
    torch.set_num_threads(2)
    console = Console()
    try:
        formats = load_formats()
        questions = load_eval_questions()
        needs = (("formats.json", formats, args.domains), ("eval.json", questions, [*args.domains, "shared"]))
        for name, have, need in needs:
            if missing := [d for d in need if d not in have]:
                raise DemoDataError(f"{DATA_DIR / name} has no entry for {missing}")
        data = {d: load_examples(DATA_DIR / f"{d}.jsonl", formats[d]) for d in args.domains}
    except DemoDataError as e:
        console.print(f"[red]demo data error:[/] {e}")
        return 2
    base_path = resolve_base_model(None, args.cache_dir).path
    args.out.mkdir(parents=True, exist_ok=True)
    timings = {}
    for d in [] if args.skip_train else args.domains:
        base, tok = load_base(base_path)
        start = time.perf_counter()
        model = train_adapter(base, tok, data[d], steps=args.steps, lr=args.lr, desc=d)
        timings[d] = time.perf_counter() - start
        save_adapter(model, args.out / d)
        console.print(f"{d}: {args.steps} steps in {timings[d]:.0f} s -> {args.out / d}")
    if not args.skip_eval:
        missing = [d for d in args.domains if not (args.out / d / "adapter_config.json").is_file()]
        if missing:
            console.print(f"[red]no adapter for {missing} in {args.out}; train them first[/]")
            return 2
        base, tok = load_base(base_path)
        evaluate(base, tok, args.out, args.domains, formats, questions, args.max_new_tokens, console)
    return 0


if __name__ == "__main__":
    sys.exit(main())
