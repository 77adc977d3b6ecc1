"""Value provenance: where each argument of a tool call came from (a prompt-injection defence).

A policy that sees only a call's arguments cannot tell "pay the IBAN the user gave" from "pay
the IBAN an email told the model to pay". This package keeps an index of every text the thread
has shown the model (user and system messages, tool outputs) and labels a value by where it
occurs:

``user``
    found in the user's or system messages;
``tool``
    else found in a trusted tool's output;
``untrusted``
    found only in untrusted tools' outputs, never in trusted text;
``model``
    found nowhere: the model made it up (or changed it, or put it together from pieces).

It is pure: no graph, no storage. The gate, CEL, state and the reviewer views build on::

    from handrail.provenance import SourceIndex, index_messages, merge, message_texts

    class State(AgentState):
        provenance: Annotated[SourceIndex, merge]          # the reducer; starts empty

    index = index_messages(state.get("provenance") or SourceIndex(), state["messages"],
                           untrusted=policy.untrusted_output)
    index.labels(call.args)       # {"recipient": "untrusted", "amount": "user"}: provenance.args
    index.untrusted_seen          # provenance.untrusted_seen
    index.explain_args(call.args, texts=message_texts(state["messages"]))
    # {"recipient": Provenance(label="untrusted", origins=(Origin(source_id="call-7",
    #   tool="read_inbox", kind="untrusted", excerpt="…send the money to DE89 3704…"), ...))}
    return {"provenance": index}  # the whole index: `merge` unions it with the old one

`SourceIndex.add(kind, text, source_id=..., tool=...)` adds one text. Register
`PROVENANCE_TYPES` with the checkpointer's ``JsonPlusSerializer(allowed_msgpack_modules=...)``;
a serializer that does not know the class hands back plain data, which `merge` accepts.

**What the index keeps.** Per source: its id, kind, tool, arrival ``seq``, SHA-256 digest and
length, the 64-bit BLAKE2b hash of each token in order (a token's position is its index), and
hash/position pairs of identifier spellings. No copy of the text: excerpts are cut from the
text when it is given (`message_texts`), checked against the digest. In memory, postings (token
hash → positions) are built on first use after a load and grown copy-on-write by `add`.

**Matching rules, and why.**

- *Normalisation.* Both sides are NFKC-normalised, case-folded, stripped of format characters
  (zero-width spaces, soft hyphens, bidi controls: an injection that hides them between the
  characters of an IBAN must not make the copy the model writes look made up) and cut into
  tokens at whitespace, quotes, brackets, ``,`` ``;`` ``|`` and ``:`` (kept in ``https://`` and
  ``10:30``); ``.!?*`` are stripped from token ends. Tokens are canonical: ``$1,000.00`` is
  ``1000`` (so the number ``1000.0`` matches it), ``https://x.com/`` is ``x.com``.
- *Whole tokens.* A value matches a source when its tokens occur there contiguously, so an
  identifier matches only a whole token: ``evil.com/pay`` is not found in ``evil.com/pay?to=me``,
  and an IBAN inside an e-mail is found. An identifier written in groups (``DE89 3704 0044 ...``,
  ``4111 1111 ...``, an IBAN with a letter bank code: ``GB33 BUKB 2020 1555 5555 55``) or with
  dashes (``555-123-4567``) also matches its joined spelling.
- *Precedence.* Found in user text → ``user``, whatever else holds it (values the user typed
  stay ``user``); else in trusted output → ``tool``; else in untrusted output → ``untrusted``.
- *Minimum length* (``min_length``, default `MIN_LENGTH` = 8 normalised characters). A shorter
  value is matched only against trusted text: found there it is ``user``/``tool``, otherwise
  ``model`` — never ``untrusted``, so a ``"eu"``, ``"yes"`` or ``100`` that an untrusted page
  happens to contain does not taint the call (amounts are for the policy's conditions).
- *Values split across outputs.* A value that no source holds whole is ``untrusted`` if a piece
  of it occurs in untrusted output and in no trusted text — an identifier-like token (not only
  letters) or a run of `SHINGLE` (3) tokens, of at least ``min_length`` characters; otherwise
  ``model``. So halves of a string from two outputs, an IBAN wrapped in the model's own words,
  or an injected sentence pasted into a message body come out ``untrusted``; a value the model
  assembled from trusted pieces comes out ``model`` (it is attributed to a source only when the
  source holds it contiguously).
- *Containers.* A list or object takes the least trusted label of its leaves, in the order
  ``untrusted`` < ``model`` < ``tool`` < ``user``: anything from untrusted content taints the
  whole; below that, a part nobody vouches for makes the whole unvouched. Keys count only when
  they are ``untrusted`` (schema field names are rarely in any text). ``None``, empty strings
  and empty containers carry nothing and are left out; a value with nothing in it is ``model``,
  and so is a bool (the model chose it). Pydantic models and dataclasses are read as their
  fields; dates as ISO text; numbers as their canonical text.

**Limits (known).** A value the model transformed (an IBAN re-spaced differently, a URL with a
path trimmed, a translated sentence) is ``model``, not ``untrusted``: a policy that guards a
recipient should ask for ``!= 'user'`` or ``in ['untrusted', 'model']``. A trusted tool's output
that repeats the call's own arguments (a receipt, a lookup) vouches only for those that were
``user`` or ``tool`` when the call was made: an echoed ``untrusted`` or ``model`` value
(`SourceIndex.echoed`, of at least ``min_length``, keys and values at any depth) matches
nothing there: whole, by an identifier-like token of it, by its runs of up to three tokens,
or by an identifier spelling (an IBAN the tool regrouped). An echo the tool rewrote otherwise
(translated, re-encoded) is not recognised and vouches. An output whose call id two calls
share is untrusted, whatever the tool: which arguments it ran with is not known. Text in
scripts without spaces (Chinese, Japanese) is one token per run, matched whole.

**untrusted_seen.** True when an untrusted output arrived after the latest user (or system)
message (`SourceIndex.last_untrusted_seq` ≥ `SourceIndex.last_user_seq`).

**Merging.** `merge` is the state reducer: the union of the two sides' sources by (id,
digest), deterministic, commutative, associative, idempotent; adding a text already held (same
id and text) changes nothing, and a node that returns ``old.add(...)`` costs no rebuild.
"""

from __future__ import annotations

from handrail.provenance._index import (
    EXCERPT_CHARS,
    Origin,
    Provenance,
    ProvenanceError,
    Source,
    SourceIndex,
    merge,
)
from handrail.provenance._lookup import SourceKind
from handrail.provenance._match import MAX_ORIGINS, MIN_LENGTH, SHINGLE, Label
from handrail.provenance._messages import (
    index_messages,
    message_source_id,
    message_text,
    message_texts,
)
from handrail.provenance._text import normalise, tokens

__all__ = [
    "EXCERPT_CHARS",
    "MAX_ORIGINS",
    "MIN_LENGTH",
    "PROVENANCE_TYPES",
    "SHINGLE",
    "Label",
    "Origin",
    "Provenance",
    "ProvenanceError",
    "Source",
    "SourceIndex",
    "SourceKind",
    "index_messages",
    "merge",
    "message_source_id",
    "message_text",
    "message_texts",
    "normalise",
    "tokens",
]

PROVENANCE_TYPES = [(t.__module__, t.__name__) for t in (SourceIndex, Provenance, Origin)]
"""The package's types that may sit in a checkpoint, for ``allowed_msgpack_modules``."""
