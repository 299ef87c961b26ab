"""Path operations on the configuration tree, with Unit's addressing rules.

A control API path below ``/config`` is split on raw ``/`` first and each token is then
percent-decoded, so ``%2F`` addresses a key that contains a slash
(``/config/listeners/unix:%2Ftmp%2Fl.sock``) while a raw ``/`` always separates tokens. Object
members are addressed by name, array elements by a decimal index. A trailing empty token (a
trailing slash) is ignored; an empty token anywhere else matches nothing.

Writes never modify the tree they are given: :func:`put`, :func:`append` and :func:`delete` return
a new tree that shares untouched subtrees with the old one, which is what makes a rejected write
atomic (the caller keeps the old tree) without deep copies of large configs.
"""

from __future__ import annotations

from urllib.parse import unquote_to_bytes

__all__ = ["NotAllowed", "NotFound", "append", "delete", "get", "put", "split_path"]


class NotFound(LookupError):
    """The path does not exist (404 "Value doesn't exist.")."""


class NotAllowed(LookupError):
    """The operation does not apply to the value at that path (405)."""


def split_path(path: str) -> list[str] | None:
    """Tokens of a path relative to the tree root ("/" is the root itself).

    Returns None when the path cannot match anything (an empty token before the end).
    """
    if path in ("", "/"):
        return []
    raw = path[1:] if path.startswith("/") else path
    pieces = raw.split("/")
    if pieces and pieces[-1] == "":
        pieces.pop()
    if any(p == "" for p in pieces):
        return None
    return [
        unquote_to_bytes(p.encode("utf-8", "surrogateescape")).decode("utf-8", "surrogateescape")
        for p in pieces
    ]


def _index(container: list, token: str) -> int | None:
    if not token.isdigit() or not token.isascii():
        return None
    i = int(token)
    return i if i < len(container) else None


def _child(node: object, token: str) -> object:
    if isinstance(node, dict):
        if token in node:
            return node[token]
        raise NotFound(token)
    if isinstance(node, list):
        i = _index(node, token)
        if i is None:
            raise NotFound(token)
        return node[i]
    raise NotFound(token)


def get(tree: object, tokens: list[str] | None) -> object:
    if tokens is None:
        raise NotFound("empty path segment")
    node = tree
    for token in tokens:
        node = _child(node, token)
    return node


def _rebuild(node: object, tokens: list[str], leaf) -> object:
    """Copy the spine from ``node`` down to the parent of the last token; ``leaf`` edits it."""
    if not tokens:
        raise NotAllowed("root")
    if len(tokens) == 1:
        return leaf(node, tokens[0])
    token = tokens[0]
    child = _child(node, token)
    new_child = _rebuild(child, tokens[1:], leaf)
    if isinstance(node, dict):
        copy = dict(node)
        copy[token] = new_child
        return copy
    copy_list = list(node)  # type: ignore[call-overload]
    copy_list[int(token)] = new_child
    return copy_list


def put(tree: object, tokens: list[str] | None, value: object) -> object:
    """Create or replace the value at ``tokens``; the parent must exist.

    Objects get a new member appended at the end (existing members keep their position); in an
    array only an existing index can be replaced.
    """
    if tokens is None:
        raise NotFound("empty path segment")
    if not tokens:
        return value

    def leaf(parent: object, token: str) -> object:
        if isinstance(parent, dict):
            copy = dict(parent)
            copy[token] = value
            return copy
        if isinstance(parent, list):
            i = _index(parent, token)
            if i is None:
                raise NotFound(token)
            copy_list = list(parent)
            copy_list[i] = value
            return copy_list
        raise NotFound(token)

    return _rebuild(tree, tokens, leaf)


def append(tree: object, tokens: list[str] | None, value: object) -> object:
    """POST: append ``value`` to the array at ``tokens``."""
    if tokens is None:
        raise NotFound("empty path segment")
    target = get(tree, tokens)
    if not isinstance(target, list):
        raise NotAllowed("not an array")
    if not tokens:
        return [*target, value]

    def leaf(parent: object, token: str) -> object:
        new_target = [*_child(parent, token), value]  # type: ignore[misc]
        if isinstance(parent, dict):
            copy = dict(parent)
            copy[token] = new_target
            return copy
        copy_list = list(parent)  # type: ignore[call-overload]
        copy_list[int(token)] = new_target
        return copy_list

    return _rebuild(tree, tokens, leaf)


def delete(tree: object, tokens: list[str] | None) -> object:
    if tokens is None:
        raise NotFound("empty path segment")

    def leaf(parent: object, token: str) -> object:
        if isinstance(parent, dict):
            if token not in parent:
                raise NotFound(token)
            return {k: v for k, v in parent.items() if k != token}
        if isinstance(parent, list):
            i = _index(parent, token)
            if i is None:
                raise NotFound(token)
            return parent[:i] + parent[i + 1 :]
        raise NotFound(token)

    return _rebuild(tree, tokens, leaf)
