"""The search pipeline of examples/search/ in Python: the same JSON contract and the same
results as search.so:app (scores equal to the last printed digit).

    curl -d '{"query":"cat","docs":["a dog barks","a cat sleeps"],"top_k":1}' localhost:8000/pysearch
    -> {"results":[{"index":1,"score":0.571429}]}

Pipeline (the ingress) checks the request, embeds the query and every document through
Embedder.embed (concurrently: the calls are batched on the Embedder's side), hands the vectors
to Ranker.rank and renders its hits. Between the deployments travel the C pipeline's messages
(examples/search/wire.h): a vector is 256 little-endian float32, a ranking request
"RNK1" | dim | n_docs | top_k | vectors, its answer n | (index, score)*n; so a Python and a C
deployment could stand in for each other. Embedder gets {"text": ...}: a bare str would arrive
decoded as JSON when it parses as JSON ("123")."""

import asyncio
import functools
import json
import math
import re
import struct

import numpy as np

from serve import Response, batch, deployment
from serve.exceptions import RayServeException

DIM = 256
MAX_DOCS = 1024
MAX_TEXT = 64 * 1024
DEFAULT_TOP_K = 10
MAX_IN_FLIGHT = 128
MAX_QUOTED = 300
RANK_MAGIC = 0x314B4E52  # "RNK1"

# ---- the embedding (examples/search/embed.c, bit for bit) ----------------------------------------

FNV_OFFSET = 0xCBF29CE484222325
FNV_PRIME = 0x100000001B3
M64 = (1 << 64) - 1
WORD_WEIGHT = 2
TRIGRAM_WEIGHT = 1
_TOKEN = re.compile(rb"[A-Za-z0-9]+")


def fnv1a64(data, h=FNV_OFFSET):
    for c in data:
        h = ((h ^ c) * FNV_PRIME) & M64
    return h


def fmix64(h):
    h ^= h >> 33
    h = (h * 0xFF51AFD7ED558CCD) & M64
    h ^= h >> 33
    h = (h * 0xC4CEB9FE1A85EC53) & M64
    h ^= h >> 33
    return h


def _feature(fnv, weight):
    h = fmix64(fnv)
    return h >> 56, -weight if (h >> 55) & 1 else weight


@functools.lru_cache(maxsize=65536)
def _token_features(token):
    """(bucket, signed weight) of a lowercased token's word and of each trigram of ^token$."""
    feats = [_feature(fnv1a64(b"w" + token), WORD_WEIGHT)]
    s = b"^" + token + b"$"
    for i in range(len(s) - 2):
        feats.append(_feature(fnv1a64(b"t" + s[i:i + 3]), TRIGRAM_WEIGHT))
    return tuple(feats)


def embed_text(text):
    """256 float32 of L2 norm 1 (or zeros): embed_text() of embed.c."""
    counts = [0] * DIM
    for m in _TOKEN.finditer(text):
        for bucket, w in _token_features(m.group().lower()):
            counts[bucket] += w
    total = math.fsum(c * c for c in counts)  # integers: exact in any order
    if total == 0:
        return np.zeros(DIM, dtype=np.float32)
    inv = 1.0 / math.sqrt(total)
    return (np.array(counts, dtype=np.float64) * inv).astype(np.float32)


# ---- ranking (examples/search/rank.c: double sums over four lanes, then a float) ---------------

def _lanes(products):
    """rank_dot's sum of the last axis: four accumulators, then (s0 + s1) + (s2 + s3)."""
    p = products.reshape(products.shape[:-1] + (products.shape[-1] // 4, 4))
    acc = np.zeros(products.shape[:-1] + (4,))
    for k in range(p.shape[-2]):
        acc += p[..., k, :]
    return (acc[..., 0] + acc[..., 1]) + (acc[..., 2] + acc[..., 3])


def rank_vectors(query, docs, top_k):
    """[(index, float32 score)] best first, ties by index: rank_cpu() of rank.c."""
    q = query.astype(np.float64)
    d = docs.astype(np.float64)
    qq = _lanes(q * q)
    qd = _lanes(d * q)
    dd = _lanes(d * d)
    with np.errstate(divide="ignore", invalid="ignore"):
        cos = (qd / (np.sqrt(qq) * np.sqrt(dd))).astype(np.float32)
    scores = np.where((qq > 0) & (dd > 0), cos, np.float32(0))
    order = np.argsort(-scores, kind="stable")[:top_k]
    return [(int(i), scores[i]) for i in order]


# ---- the deployments -----------------------------------------------------------------------------

def _error(status, message, headers=None):
    body = json.dumps({"error": message}, ensure_ascii=False, separators=(",", ":"))
    return Response(body.encode("utf-8", "surrogateescape"), status=status, headers=headers,
                    media_type="application/json")


class _Reject(Exception):
    def __init__(self, status, message):
        super().__init__(message)
        self.status = status


def _first_wins(pairs):
    d = {}
    for k, v in pairs:
        d.setdefault(k, v)  # cJSON finds a repeated key's first value
    return d


def _no_constant(name):
    raise ValueError("not JSON: " + name)


def _cstring(s):
    """A JSON string as the C pipeline sees it: bytes up to the first NUL."""
    return s.encode("utf-8", "surrogateescape").split(b"\0", 1)[0]


def parse_request(body):
    """(texts: query then docs, top_k) of a search body, or raises _Reject."""
    text = body.decode("utf-8", "surrogateescape")
    start = 0
    while start < len(text) and text[start] <= " ":
        start += 1
    try:  # like cJSON_ParseWithLength: one value, whatever follows it is ignored
        root, _ = json.JSONDecoder(object_pairs_hook=_first_wins, parse_constant=_no_constant,
                                   strict=False).raw_decode(text, start)
    except (ValueError, RecursionError):
        raise _Reject(400, "the body is not valid JSON") from None
    if not isinstance(root, dict):
        raise _Reject(400, "the body must be a JSON object")
    if "query" not in root:
        raise _Reject(400, 'missing field "query"')
    query = root["query"]
    if not isinstance(query, str):
        raise _Reject(400, '"query" must be a string')
    query = _cstring(query)
    if len(query) > MAX_TEXT:
        raise _Reject(413, '"query" is longer than %d bytes' % MAX_TEXT)
    if "docs" not in root:
        raise _Reject(400, 'missing field "docs"')
    docs = root["docs"]
    if not isinstance(docs, list):
        raise _Reject(400, '"docs" must be an array of strings')
    for n, doc in enumerate(docs):
        if not isinstance(doc, str):
            raise _Reject(400, '"docs"[%d] must be a string' % n)
        if n + 1 > MAX_DOCS:
            raise _Reject(413, "too many docs: at most %d" % MAX_DOCS)
    top_k = DEFAULT_TOP_K
    if "top_k" in root:
        v = root["top_k"]
        if (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)
                or v < 1 or v != math.floor(v)):
            raise _Reject(400, '"top_k" must be an integer >= 1')
        top_k = MAX_DOCS if v > MAX_DOCS else int(v)
    texts = [query]
    for i, doc in enumerate(docs):
        doc = _cstring(doc)
        if len(doc) > MAX_TEXT:
            raise _Reject(413, '"docs"[%d] is longer than %d bytes' % (i, MAX_TEXT))
        texts.append(doc)
    return texts, top_k


def _call_failed(deployment, method, e):
    """Backpressure (503) and timeouts (504) pass through; anything else failed behind us: 502."""
    status = e.status if e.status in (503, 504) else 502
    return _Reject(status, "%s.%s: %s" % (deployment, method, e.message[:MAX_QUOTED]))


@deployment(num_replicas=3)
class Pipeline:
    def __init__(self, embedder, ranker):
        self.embedder = embedder
        self.ranker = ranker

    async def __call__(self, request):
        if request.method != "POST":
            return _error(405, "method %s not allowed: POST a JSON search request" % request.method,
                          headers={"Allow": "POST"})
        try:
            texts, top_k = parse_request(request.body)
            vectors = await self._embed_all(texts)
            hits = await self._rank(vectors, len(texts) - 1, top_k)
        except _Reject as e:
            return _error(e.status, str(e))
        body = ",".join('{"index":%d,"score":%.6f}' % (i, s) for i, s in hits)
        return Response(('{"results":[%s]}\n' % body).encode(), media_type="application/json")

    async def _embed_all(self, texts):
        payload = [struct.pack("<4I", RANK_MAGIC, DIM, len(texts) - 1, 0)]
        for start in range(0, len(texts), MAX_IN_FLIGHT):
            calls = [self.embedder.embed.remote({"text": t.decode("utf-8", "surrogateescape")})
                     for t in texts[start:start + MAX_IN_FLIGHT]]
            answers = await asyncio.gather(*calls, return_exceptions=True)
            for a in answers:
                if isinstance(a, RayServeException):
                    raise _call_failed("Embedder", "embed", a)
                if isinstance(a, BaseException):
                    raise a
                if not isinstance(a, bytes) or len(a) != DIM * 4:
                    raise _Reject(502, "Embedder.embed: an answer of %d bytes, not %d"
                                  % (len(a) if isinstance(a, bytes) else 0, DIM * 4))
                payload.append(a)
        return payload

    async def _rank(self, payload, n_docs, top_k):
        header = struct.pack("<4I", RANK_MAGIC, DIM, n_docs, top_k)
        try:
            answer = await self.ranker.rank.remote(header + b"".join(payload[1:]))
        except RayServeException as e:
            raise _call_failed("Ranker", "rank", e) from None
        max_hits = min(top_k, n_docs)
        if not isinstance(answer, bytes) or len(answer) < 4:
            raise _Reject(502, "Ranker.rank: a malformed answer of %d bytes"
                          % (len(answer) if isinstance(answer, bytes) else 0))
        n = struct.unpack_from("<I", answer)[0]
        if n > max_hits or len(answer) != 4 + 8 * n:
            raise _Reject(502, "Ranker.rank: a malformed answer of %d bytes" % len(answer))
        hits = [struct.unpack_from("<If", answer, 4 + 8 * i) for i in range(n)]
        for i, _ in hits:
            if i >= n_docs:
                raise _Reject(502, "Ranker.rank: a hit for document %d of %d" % (i, n_docs))
        return hits


def _text_of(value):
    """The text an Embedder call carries: {"text": str}, or a body as the C pipeline sends."""
    if isinstance(value, dict) and isinstance(value.get("text"), str):
        return value["text"].encode("utf-8", "surrogateescape")
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape")
    return json.dumps(value).encode()


def _embed_one(value):
    text = _text_of(value)
    if len(text) > MAX_TEXT:
        return Response("a text of %d bytes: at most %d" % (len(text), MAX_TEXT), status=413,
                        media_type="text/plain")
    return embed_text(text).astype("<f4").tobytes()


@deployment(num_replicas=2, max_ongoing_requests=16)
class Embedder:
    @batch(max_batch_size=16, batch_wait_timeout_s=0.002)
    def embed(self, values):
        return [_embed_one(v) for v in values]

    def __call__(self, value):
        return _embed_one(value.body if hasattr(value, "body") else value)


def _text_error(status, message):
    return Response(message, status=status, media_type="text/plain")


@deployment(num_replicas=1)
class Ranker:
    def rank(self, payload):
        if not isinstance(payload, bytes):
            payload = b""
        if len(payload) < 16 or struct.unpack_from("<I", payload)[0] != RANK_MAGIC:
            return _text_error(400, "bad request: not a ranking request (%d bytes)" % len(payload))
        _, dim, n_docs, top_k = struct.unpack_from("<4I", payload)
        if dim != DIM or top_k == 0:
            return _text_error(400, "bad request: dim must be %d and top_k >= 1" % DIM)
        if n_docs > MAX_DOCS:
            return _text_error(400, "bad request: more than %d documents" % MAX_DOCS)
        if len(payload) != 16 + (1 + n_docs) * dim * 4:
            return _text_error(400, "bad request: not a ranking request (%d bytes)" % len(payload))
        vec = np.frombuffer(payload, dtype="<f4", offset=16).reshape(1 + n_docs, dim)
        if not np.isfinite(vec).all():
            return _text_error(400, "bad request: a vector holds a NaN or an infinity")
        hits = rank_vectors(vec[0], vec[1:], top_k)
        return struct.pack("<I", len(hits)) + b"".join(struct.pack("<If", i, s) for i, s in hits)


app = Pipeline.bind(Embedder.bind(), Ranker.bind())
