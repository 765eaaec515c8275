"""From observations to a matrix: components, rules and what is left for review (``matrix learn``).

Stage: learning, pure. Input: :class:`~auditor.learn.observe.Observations`, :class:`Options` and, for
``--matrix``, the user's compiled matrix. Output: :class:`Learned` — components (name, selector, evidence),
rules (one per source/destination pair, ports as observed, evidence) and review notes (drops, provisional
connections, edges below ``--min-connections``, peers out of scope or that no selector can name).

How, in order:

1. Edges of the ``allowed`` table (delivered or ``AUDIT``) with at least one end a pod in scope are kept;
   the others go to review.
2. Every group at an end of a kept edge becomes a candidate component (:mod:`auditor.learn.components`).
3. The candidates are compiled into a real :class:`~auditor.matrix.Matrix` — after the user's components
   with ``--matrix``, so that appending them changes nothing the user wrote — and each pod group's label
   variants are resolved through it: a variant that another learned component would take (first match
   wins) gets both components pinned to their workload.
4. Every peer of a kept edge is resolved through that matrix, exactly as the classifier will, and the
   edges are merged per (source component, destination component): the rules. So replaying the same
   flows against the learned matrix finds a rule for every delivered connection, and every rule is used.
   With ``--matrix``, ports the user's rules already allow are left out.
5. Ports below ``--min-connections`` go to review; components no rule uses are dropped (nothing resolved to
   them, so dropping them changes no other resolution).

Error policy: none expected; a generated selector the matrix compiler rejects is a bug and raises
:class:`~auditor.matrix.MatrixError`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

from auditor.learn import components as comps
from auditor.learn.observe import CIDR, FQDN, POD, UNKNOWN, EdgeKey, EdgeStats, Observations, Peer, Tally
from auditor.matrix import Matrix, parse_matrix
from auditor.model import ICMP_PROTOCOLS

MAX_REVIEW_LINES: Final = 40


@dataclass(frozen=True)
class Options:
    name: str = "learned"
    namespaces: frozenset[str] | None = None
    min_connections: int = 1
    port_gap: int | None = None  # --port-ranges: merge ports at most this far apart


@dataclass
class Rule:
    source: str
    destination: str
    ports: dict[tuple[str, int | None], Tally]
    ports_text: list[str] = field(default_factory=list)


@dataclass
class ReviewLine:
    source: str
    destination: str
    port: str
    stats: Tally
    reasons: dict[str, int] = field(default_factory=dict)


@dataclass
class Learned:
    options: Options
    observations: Observations
    existing: Matrix | None
    scope: list[str]
    components: list[comps.Candidate]
    rules: list[Rule]
    review: dict[str, list[ReviewLine]]
    review_counts: dict[str, int]
    matrix: Matrix  # what the result resolves with (the user's components first with --matrix)


REVIEW_TITLES: Final = {
    "dropped": "dropped (DROPPED/ERROR verdicts): never a rule",
    "below_min": "seen fewer times than --min-connections",
    "unproven": "seen only through provisional evidence (delivery never proven)",
    "scope": "outside the scope (no end is a pod in a scoped namespace)",
    "unnamed": "an end no selector can name (unknown identity)",
}


def port_key(protocol: str, port: int | None) -> tuple[int, str, int]:
    return (1 if protocol in ICMP_PROTOCOLS else 0, protocol, port or 0)


def port_text(protocol: str, port: int | None) -> str:
    return protocol if port is None else f"{port}/{protocol}"


Item = tuple[Peer, Peer, str, int | None, EdgeStats]


def build(obs: Observations, options: Options, existing: Matrix | None = None) -> Learned:
    """Components, rules and review notes from ``obs`` (see the module docstring)."""
    scope = options.namespaces
    if scope is None and existing is not None:
        scope = existing.scope_namespaces
    kept, review = _select(obs, scope)
    taken = [c.name for c in existing.components] if existing is not None else []
    candidates = comps.candidates(_groups_of(kept), taken, obs.peers)
    matrix = _compile(candidates, existing, options.name)
    candidates, matrix = _pin_conflicts(candidates, matrix, obs, existing, options.name)
    resolve = _resolver(matrix)
    pairs: dict[tuple[str, str], dict[tuple[str, int | None], Tally]] = {}
    names = {c.name for c in matrix.components}
    for src, dst, protocol, port, stats in kept:
        a, b = resolve(src), resolve(dst)
        if a not in names or b not in names:
            review["unnamed"].append((src, dst, protocol, port, stats))
        elif existing is None or existing.rule_for(a, b, protocol, port or 0) is None:
            pairs.setdefault((a, b), {}).setdefault((protocol, port), Tally()).add(stats)
    rules, below = _rules(pairs, options)
    used = {r.source for r in rules} | {r.destination for r in rules}
    learned_components = [c for c in candidates if c.name in used]
    if existing is not None:
        scope_list = sorted(scope or ())
    elif options.namespaces is not None:
        scope_list = sorted(options.namespaces)
    else:
        scope_list = sorted({ns for c in learned_components for ns in c.namespaces})
    names = {c.name for c in learned_components}
    if existing is not None:
        names |= {c.name for c in existing.components}
    lines = {key: _review_lines(items, resolve, names) for key, items in review.items()}
    lines["below_min"] = below
    lines["dropped"] = _review_lines(_items(obs.dropped, obs.peers), resolve, names, reasons=True)
    lines["unproven"] = _review_lines(_items(obs.unproven, obs.peers), resolve, names)
    counts = {k: sum(x.stats.connections for x in v) for k, v in lines.items()}
    for v in lines.values():
        v.sort(key=lambda x: (-x.stats.connections, x.source, x.destination, x.port))
    return Learned(options, obs, existing, scope_list, learned_components, rules, lines, counts, matrix)


def _select(obs: Observations, scope: frozenset[str] | None) -> tuple[list[Item], dict[str, list[Item]]]:
    """The ``allowed`` edges rules may come from, and the others by review section."""
    review: dict[str, list[Item]] = {k: [] for k in REVIEW_TITLES}
    kept: list[Item] = []
    for (s, d, protocol, port), stats in obs.allowed.items():
        src, dst = obs.peers[s], obs.peers[d]
        item = (src, dst, protocol, port, stats)
        if src.group.kind == UNKNOWN or dst.group.kind == UNKNOWN or port == 0:
            review["unnamed"].append(item)
        elif not (_in_scope(src, scope) or _in_scope(dst, scope)):
            review["scope"].append(item)
        else:
            kept.append(item)
    return kept, review


def _rules(
    pairs: dict[tuple[str, str], dict[tuple[str, int | None], Tally]], options: Options
) -> tuple[list[Rule], list[ReviewLine]]:
    """One rule per pair with the ports seen at least ``--min-connections`` times; the rest for review."""
    below: list[ReviewLine] = []
    rules: list[Rule] = []
    for (a, b), ports in sorted(pairs.items()):
        ordered = sorted(ports.items(), key=lambda kv: port_key(*kv[0]))
        keep = {k: v for k, v in ordered if v.connections >= options.min_connections}
        below += [ReviewLine(a, b, port_text(*k), v) for k, v in ordered if k not in keep]
        if keep:
            rules.append(Rule(a, b, keep, merge_ports(list(keep), options.port_gap)))
    return rules, below


def merge_ports(ports: list[tuple[str, int | None]], gap: int | None) -> list[str]:
    """Port strings in order; with ``gap``, ports of one protocol at most ``gap`` apart become a range."""
    ordered = sorted(ports, key=lambda p: port_key(*p))
    if gap is None:
        return [port_text(p, n) for p, n in ordered]
    out: list[str] = []
    run: list[int] = []
    run_proto = ""

    def close() -> None:
        if run:
            out.append(f"{run[0]}/{run_proto}" if len(run) == 1 else f"{run[0]}-{run[-1]}/{run_proto}")
            run.clear()

    for protocol, port in ordered:
        if port is None:
            close()
            out.append(protocol)
            continue
        if run and (protocol != run_proto or port - run[-1] > gap):
            close()
        run_proto = protocol
        run.append(port)
    close()
    return out


# -- helpers ----------------------------------------------------------------------------------------


def _in_scope(peer: Peer, scope: frozenset[str] | None) -> bool:
    g = peer.group
    return g.kind == POD and (scope is None or g.namespace in scope)


def _groups_of(kept: Iterable[Item]) -> list[Peer]:
    out: dict[int, Peer] = {}
    for src, dst, *_ in kept:
        out.setdefault(src.id, src)
        out.setdefault(dst.id, dst)
    return [out[k] for k in sorted(out)]


def _compile(candidates: list[comps.Candidate], existing: Matrix | None, name: str) -> Matrix:
    """The candidates as a compiled matrix (after the user's components, with ``--matrix``)."""
    from auditor.learn.write import components_block

    text = (
        (
            "apiVersion: flow-auditor/v1alpha1\nkind: CommunicationMatrix\n"
            f"metadata: {{name: {name}}}\ncomponents:\n{components_block(candidates)}allow: []\n"
        )
        if candidates
        else ""
    )
    learned = parse_matrix(text, "<learned>").components if candidates else ()
    if existing is not None:
        return dataclasses.replace(existing, components=(*existing.components, *learned))
    return Matrix(name, "<learned>", tuple(learned), (), None, {})


def _pin_conflicts(
    candidates: list[comps.Candidate],
    matrix: Matrix,
    obs: Observations,
    existing: Matrix | None,
    name: str,
) -> tuple[list[comps.Candidate], Matrix]:
    """Pin pod components to their workload where a variant of one would be named by another."""
    by_group = {c.group: c for c in candidates if c.kind == POD}
    for _ in range(3):
        pin: set[str] = set()
        for peer in obs.peers:
            own = by_group.get(peer.group.key)
            if own is None:
                continue
            got = matrix.resolve(peer.endpoint, peer.ip, peer.names)
            if got != own.name and any(c.name == got for c in by_group.values()):
                pin.update({own.name, got})
        changed = [c for c in candidates if c.name in pin and c.workload is not None and not c.pinned]
        if not changed:
            break
        candidates = [dataclasses.replace(c, pinned=True) if c in changed else c for c in candidates]
        by_group = {c.group: c for c in candidates if c.kind == POD}
        matrix = _compile(candidates, existing, name)
    return candidates, matrix


def _resolver(matrix: Matrix) -> comps.Resolve:
    cache: dict[int, str] = {}

    def resolve(peer: Peer) -> str:
        name = cache.get(peer.id)
        if name is None:
            name = cache[peer.id] = matrix.resolve(peer.endpoint, peer.ip, peer.names)
        return name

    return resolve


def _items(table: dict[EdgeKey, EdgeStats], peers: list[Peer]) -> list[Item]:
    return [(peers[s], peers[d], p, n, st) for (s, d, p, n), st in table.items()]


def _review_lines(
    items: list[Item],
    resolve: comps.Resolve,
    names: set[str],
    *,
    reasons: bool = False,
) -> list[ReviewLine]:
    merged: dict[tuple[str, str, str], ReviewLine] = {}
    for src, dst, protocol, port, stats in items:
        a = _describe(src, resolve, names)
        b = _describe(dst, resolve, names)
        key = (a, b, port_text(protocol, port))
        line = merged.get(key)
        if line is None:
            line = merged[key] = ReviewLine(a, b, key[2], Tally())
        line.stats.add(stats)
        if reasons:
            for r, n in stats.reasons.items():
                line.reasons[r] = line.reasons.get(r, 0) + n
    return list(merged.values())


def _describe(peer: Peer, resolve: comps.Resolve, names: set[str]) -> str:
    if peer.group.kind != UNKNOWN:
        name = resolve(peer)
        if name in names:
            return name
    return comps.describe(peer)


__all__ = ["CIDR", "FQDN", "Learned", "Options", "build", "merge_ports"]
