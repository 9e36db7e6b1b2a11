"""A context-free language over text for ``--method grammar`` (``--set lark=...``): an incremental parser on
Lark's LALR interactive parser (the optional package ``lark``: ``pip install 'alignkit[grammar]'``).

The grammar is written in Lark's EBNF (https://lark-parser.readthedocs.io/en/stable/grammar.html), with
start rule ``start`` and ``%ignore`` terminals allowed between any two terminals. Its language L is the set
of texts that split into a sequence of terminal strings (and ignored ones) which the rules derive from
``start``. Every split is considered, not only the longest-match one a lexer would take, so a text is in L
when *some* lexing of it parses (the same as Lark's own lexer for grammars whose terminals do not
overlap, e.g. literal strings and disjoint character classes).

The sampler needs two predicates of a prefix text (the interface of `alignkit.inference.grammar.RegexGrammar`):

* ``extends(u, s)`` — some extension of ``u + s`` is in L (the prefix is viable);
* ``complete(u)`` — u itself is in L.

Incrementally: the *frontier* of a prefix u (memoised per u) is every configuration ``(parser, tail)``
where ``parser`` has consumed a split of ``u`` minus ``tail`` into whole terminals and ``tail`` is a prefix
of some terminal the parser accepts next (``regex`` partial matching of the terminal's pattern). For a
token piece s, ``u + s`` is viable iff some configuration's ``tail + s`` again splits into whole terminals
the parser accepts followed by such a prefix; u is complete iff a configuration has an empty tail and
the parser accepts the end of input. LALR parsers detect an error at the first terminal no sentence can
continue with (the viable-prefix property), so the accepted-terminal sets are exact.
"""

from __future__ import annotations

from pathlib import Path

import regex

from alignkit.errors import ConfigError

END = "$END"


def _lark():
    try:
        import lark
    except ImportError:
        raise ConfigError("grammar with lark=...: needs the optional package lark "
                          "(pip install 'alignkit[grammar]', or pip install lark)") from None
    return lark


class CfgGrammar:
    """A context-free language from Lark grammar text (or a path to a ``.lark`` file); module docstring."""

    def __init__(self, grammar: str):
        lark = _lark()
        if not isinstance(grammar, str) or not grammar.strip():
            raise ConfigError("grammar needs a Lark grammar: --set lark='start: \"(\" start \")\" | \"x\"' "
                              "(or lark=FILE.lark)")
        text = Path(grammar).read_text(encoding="utf-8") if grammar.endswith(".lark") and Path(grammar).is_file() else grammar
        try:
            self.parser = lark.Lark(text, parser="lalr", start="start")
        except lark.exceptions.LarkError as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ConfigError(f"grammar lark: the grammar does not build: {first}") from None
        self.Token = lark.Token
        self.patterns = {t.name: regex.compile(self._regexp(t.pattern)) for t in self.parser.terminals}
        self.ignored = frozenset(self.parser.ignore_tokens)
        self._accepts: dict[tuple, frozenset] = {}
        self._frontiers: dict[str, list] = {}

    @staticmethod
    def _regexp(pattern) -> str:
        flags = "".join(sorted(pattern.flags))
        return f"(?{flags}){pattern.to_regexp()}" if flags else pattern.to_regexp()

    # ------------------------------------------------------------------ parser states
    @staticmethod
    def _key(ip) -> tuple:
        return tuple(ip.parser_state.state_stack)

    def _next(self, ip) -> frozenset:
        """Terminals the parser can take next (``$END`` included when the input may end), plus ignored ones."""
        key = self._key(ip)
        if key not in self._accepts:
            self._accepts[key] = frozenset(ip.accepts()) | self.ignored
        return self._accepts[key]

    def _feed(self, ip, name: str, value: str):
        if name in self.ignored:
            return ip
        ip = ip.copy()
        ip.feed_token(self.Token(name, value))
        return ip

    def _partial(self, ip, tail: str) -> bool:
        """``tail`` is a (possibly whole) prefix of a terminal the parser accepts next."""
        return any(self.patterns[t].fullmatch(tail, partial=True) for t in self._next(ip) if t != END)

    def _splits(self, ip, tail: str):
        """``(parser, rest)`` after one whole accepted terminal at the start of ``tail`` (every length)."""
        for name in self._next(ip):
            if name == END:
                continue
            pat = self.patterns[name]
            for k in range(1, len(tail) + 1):
                if pat.fullmatch(tail[:k]):
                    yield self._feed(ip, name, tail[:k]), tail[k:]

    # ------------------------------------------------------------------ prefixes
    def _collect(self, ip, tail: str, out: dict) -> None:
        key = (self._key(ip), tail)
        if key in out:
            return
        if not tail or self._partial(ip, tail):
            out[key] = (ip, tail)
        for nxt, rest in self._splits(ip, tail):
            self._collect(nxt, rest, out)

    def frontier(self, text: str) -> list:
        """Every configuration ``(parser, tail)`` of the prefix ``text`` (module docstring); [] if not viable."""
        if text not in self._frontiers:
            out: dict = {}
            self._collect(self.parser.parse_interactive(""), text, out)
            self._frontiers[text] = list(out.values())
        return self._frontiers[text]

    def _viable_from(self, ip, tail: str, seen: set) -> bool:
        key = (self._key(ip), tail)
        if key in seen:
            return False
        seen.add(key)
        if not tail or self._partial(ip, tail):
            return True
        return any(self._viable_from(nxt, rest, seen) for nxt, rest in self._splits(ip, tail))

    def extends(self, text: str, piece: str) -> bool:
        """Some extension of ``text + piece`` is in L (``text``'s frontier is memoised)."""
        seen: set = set()
        return any(self._viable_from(ip, tail + piece, seen) for ip, tail in self.frontier(text))

    def viable(self, text: str) -> bool:
        return bool(self.frontier(text))

    def complete(self, text: str) -> bool:
        return any(not tail and END in self._next(ip) for ip, tail in self.frontier(text))
