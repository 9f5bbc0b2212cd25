"""Token ids to the text a client sees: whole characters only, cut at the first stop string the way
OpenAI cuts (the stop string and everything after it are not returned), streaming included — text
that could still become a stop string is held back until it cannot.

    >>> t = TextStream(tokenizer, stops=["\\n\\n"])        # doctest: +SKIP
    >>> t.push(token_id)   # the new text to send ("" while held back); t.stopped once a stop appears  # doctest: +SKIP
"""

from __future__ import annotations


class TextStream:
    def __init__(self, tokenizer, stops: list[str] = ()):
        self.tokenizer, self.stops = tokenizer, [s for s in stops if s]
        self.tokens: list[int] = []
        self.text, self.sent = "", 0  # decoded so far; characters released
        self.prefix = self.read = 0  # tokens[prefix:read]: the context of the last decoded piece
        self.stopped = False

    def _decode(self, ids) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def push(self, token: int) -> str:
        """Take one token; return the text now safe to send."""
        if self.stopped:
            return ""
        self.tokens.append(token)
        before = self._decode(self.tokens[self.prefix : self.read])
        after = self._decode(self.tokens[self.prefix :])
        if len(after) > len(before) and not after.endswith("\ufffd"):  # whole characters only
            self.text += after[len(before) :]
            self.prefix, self.read = self.read, len(self.tokens)
        return self._release(final=False)

    def finish(self) -> str:
        """The end of the stream: the rest of the text (cut at a stop string if one appears)."""
        if not self.stopped:
            whole = self._decode(self.tokens)
            if whole.startswith(self.text):
                self.text = whole
        return self._release(final=True)

    def _release(self, final: bool) -> str:
        if self.stopped:
            return ""
        hits = [i for i in (self.text.find(s, max(0, self.sent - len(s) + 1)) for s in self.stops) if i >= 0]
        if hits:
            end, self.stopped = min(hits), True
        else:
            end = len(self.text) - (0 if final else self._held())
        out = self.text[self.sent : max(end, self.sent)]
        self.sent = max(self.sent, end)
        return out

    def _held(self) -> int:
        """Characters at the end of the text that begin some stop string (they may become one)."""
        longest = 0
        for s in self.stops:
            for n in range(min(len(s) - 1, len(self.text)), longest, -1):
                if self.text.endswith(s[:n]):
                    longest = n
                    break
        return longest

    def released(self) -> str:
        return self.text[: self.sent]
