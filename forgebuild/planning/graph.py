"""The target graph (networkx): cycles, build order and drawings (text, DOT, Mermaid)."""
from __future__ import annotations

import heapq


def build(targets):
    """A networkx graph; edges point from a dependency to the target that reads it."""
    import networkx as nx

    g = nx.DiGraph()
    for address, target in targets.items():
        g.add_node(address)
        for dep in target.deps:
            g.add_edge(dep, address)
    return g


def cycles(targets) -> list[list[str]]:
    """One cycle per strongly connected knot, each starting at its smallest address.

    Each cycle is listed target-first: [a, b] means a reads b and b reads a.
    """
    try:
        topological_order(targets)
        return []  # the common case, decided without networkx
    except ValueError:
        pass
    import networkx as nx

    g = build(targets).reverse(copy=False)  # a -> what a reads
    found = []
    for component in nx.strongly_connected_components(g):
        if len(component) < 2:
            continue
        start = min(component)
        edges = nx.find_cycle(g.subgraph(component), source=start)
        found.append([u for u, _ in edges])
    return sorted(found)


def topological_order(targets) -> list[str]:
    """Dependencies first, ties broken by address (Kahn's algorithm with a heap).

    Plain Python rather than networkx: this runs whenever the Forgefile changed,
    and importing networkx alone costs ~100 ms here. Only edges between the given
    targets count: the planner orders the valid part of a Forgefile that also has
    invalid targets (b reads a, a reads a missing target), to report every cycle.
    """
    within = {a: [d for d in t.deps if d in targets] for a, t in targets.items()}
    waiting = {a: len(deps) for a, deps in within.items()}
    readers: dict[str, list[str]] = {a: [] for a in targets}
    for address, deps in within.items():
        for dep in deps:
            readers[dep].append(address)
    ready = [a for a, n in waiting.items() if n == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        address = heapq.heappop(ready)
        order.append(address)
        for reader in readers[address]:
            waiting[reader] -= 1
            if waiting[reader] == 0:
                heapq.heappush(ready, reader)
    if len(order) != len(targets):
        raise ValueError("the graph has a cycle")
    return order


def render(plan, addresses, fmt: str, states: dict | None = None) -> str:
    states = states or {}
    closure = plan.closure(addresses)
    edges = [(dep, a) for a in closure for dep in plan.targets[a].deps]
    if fmt == "dot":
        colours = {"fresh": "palegreen", "remote": "lightblue", "stale": "gold", "missing": "lightgrey"}
        lines = ["digraph forgebuild {", "  rankdir=LR;", "  node [shape=box, style=filled, fillcolor=white];"]
        for a in closure:
            colour = colours.get(states.get(a, ""), "white")
            lines.append(f'  "{a}" [fillcolor={colour}];')
        lines += [f'  "{u}" -> "{v}";' for u, v in edges]
        return "\n".join(lines + ["}"])
    if fmt == "mermaid":
        ids = {a: f"t{i}" for i, a in enumerate(closure)}
        lines = ["graph LR"]
        lines += [f'  {ids[a]}["{a}"]' for a in closure]
        lines += [f"  {ids[u]} --> {ids[v]}" for u, v in edges]
        return "\n".join(lines)
    lines = []
    for a in closure:
        deps = plan.targets[a].deps
        state = f"  [{states[a]}]" if a in states else ""
        lines.append(f"{a}{state}" + (f"  <- {', '.join(deps)}" if deps else ""))
    return "\n".join(lines)
