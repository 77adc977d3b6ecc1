"""Value provenance: the cost of indexing tool outputs and of labelling one call's arguments.

Builds a thread with a user message and 50 KB of prior tool output (e-mails and web pages,
half of them untrusted, with IBANs, URLs and addresses among the prose), then times:

- adding one 50 KB output to the index (tokenising and hashing it);
- labelling one call's arguments (a few strings, a number, a list) with the index in memory:
  the per-call cost the issue bounds at 0.3 ms;
- labelling a long body (250 words pasted from an untrusted output);
- the first labelling after a checkpoint round trip (the in-memory tables rebuilt);
- the index's serialised size beside the text it covers.

Run: ``.venv/bin/python benchmarks/provenance.py [--kb 50] [--repeat 2000]``. The machine is
shared: each figure is the median of many runs, with the 90th percentile beside it.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable

from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer

from handrail.provenance import PROVENANCE_TYPES, SourceIndex, SourceKind

PROSE = (
    "the meeting project budget report please review attached schedule team customer invoice "
    "payment account travel hotel booking flight restaurant dinner reservation update office "
    "quarterly results marketing campaign launch deadline tomorrow monday friday confirm thanks "
    "regards best hello urgent information security password reset link click below details"
)
WORDS = PROSE.split()


def _output(rng: random.Random, size: int) -> str:
    parts: list[str] = []
    length = 0
    while length < size:
        roll = rng.random()
        if roll < 0.02:
            part = f"DE{rng.randrange(10**20):020d}"
        elif roll < 0.04:
            part = f"https://www.site-{rng.randrange(10**6)}.com/page/{rng.randrange(10**4)}"
        elif roll < 0.06:
            part = f"person.{rng.randrange(10**5)}@example.com"
        else:
            part = rng.choice(WORDS)
        parts.append(part)
        length += len(part) + 1
    return " ".join(parts)


def _timed(fn: Callable[[], object], repeat: int) -> tuple[float, float]:
    runs = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - start)
    runs.sort()
    return statistics.median(runs) * 1000, runs[int(len(runs) * 0.9)] * 1000


def main() -> None:
    """Print the figures."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--kb", type=int, default=50, help="prior tool output in the thread")
    parser.add_argument("--repeat", type=int, default=2000)
    options = parser.parse_args()
    rng = random.Random(7)
    index = SourceIndex().add(
        "user", "Pay my rent to my landlord and summarise my inbox, thanks", source_id="human-1"
    )
    outputs = [_output(rng, 5_000) for _ in range(options.kb * 1000 // 5_000)]
    for number, text in enumerate(outputs):
        kind: SourceKind = "untrusted" if number % 2 else "tool"
        index = index.add(kind, text, source_id=f"call-{number}", tool="read_inbox")
    injected = outputs[1].split()
    iban = next(word for word in injected if word.startswith("DE"))
    args = {
        "recipient": iban,
        "amount": 1250.0,
        "subject": "Rent for the month of March",
        "body": " ".join(injected[10:40]),
        "cc": ["person.12@example.com", "someone.new@example.org"],
        "url": "https://www.site-1.com/page/2",
    }
    print(f"labels: {index.labels(args)}")
    kb = sum(map(len, outputs)) / 1000
    print(f"thread: {kb:.0f} KB of tool output in {len(outputs)} outputs")

    big = _output(rng, options.kb * 1000)
    add_ms, add_p90 = _timed(lambda: index.add("untrusted", big, source_id="new"), 10)
    fresh = [
        " ".join("".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=7)) for _ in range(6_500))
        for _ in range(5)
    ]
    new_ms, new_p90 = _timed(lambda: index.add("tool", fresh.pop(), source_id="new"), 5)
    long_args = {"body": " ".join(injected[:250]), "note": "A summary written by the model."}
    long_ms, long_p90 = _timed(lambda: index.labels(long_args), options.repeat // 10)
    cold_ms, cold_p90 = _timed(lambda: SourceIndex().add("tool", big, source_id="new"), 10)
    label_ms, label_p90 = _timed(lambda: index.labels(args), options.repeat)
    serde = JsonPlusSerializer(allowed_msgpack_modules=PROVENANCE_TYPES)
    dumped = serde.dumps_typed(index)
    load_ms, load_p90 = _timed(lambda: serde.loads_typed(dumped).labels(args), 20)
    json_size = len(index.model_dump_json())

    size = f"{options.kb} KB"
    print(f"add one {size} output (index in memory): {add_ms:.2f} ms (p90 {add_p90:.2f})")
    print(f"add one {size} output to an empty index:  {cold_ms:.2f} ms (p90 {cold_p90:.2f})")
    print(f"add one {size} output of words never seen: {new_ms:.2f} ms (p90 {new_p90:.2f})")
    print(f"label one call's {len(args)} arguments: {label_ms:.3f} ms (p90 {label_p90:.3f})")
    print(f"label a {len(long_args['body'])}-char body: {long_ms:.3f} ms (p90 {long_p90:.3f})")
    print(f"checkpoint load + first label (tables rebuilt): {load_ms:.2f} ms (p90 {load_p90:.2f})")
    print(
        f"serialised index: msgpack {len(dumped[1]) / 1000:.0f} KB, JSON {json_size / 1000:.0f} KB"
        f" for {kb:.0f} KB of text"
    )


if __name__ == "__main__":
    main()
