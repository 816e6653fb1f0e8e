"""Test drafters with known quality: oracle (always right), adversarial (always wrong), random.

They implement the engine's DraftSession protocol without a model, so the lossless property
can be checked against drafts of every quality and tree shape.
"""

from __future__ import annotations

import random

from kerv_ros.drafts import DraftTree, TokenSource


class _Session:
    source = TokenSource.DRAFTER

    def __init__(self, drafter, truth):
        self.drafter = drafter
        self.truth = truth
        self.forwards = 0

    def advance(self, path_hidden, accepted):
        assert path_hidden.shape[0] == len(accepted) + 1

    def draft(self, tokens, max_depth):
        self.forwards += 1
        depth = min(self.drafter.depth, max_depth)
        return self.drafter.make_tree(tokens, self.truth, depth)


class ScriptedDrafter:
    """Drafts from the true greedy continuation ``truth`` (computed with ``ar``).

    kind ``oracle`` puts the true token on the main branch; ``adversarial`` drafts only tokens
    that differ from it (offset by +``offset`` bins, plus wrong siblings); ``random`` drafts
    random action tokens. ``siblings`` > 1 adds branches at every level.
    """

    def __init__(self, kind, truth_of, depth=6, siblings=1, offset=1, seed=0, first=0, last=0):
        self.kind = kind
        self.truth_of = truth_of
        self.depth = depth
        self.siblings = siblings
        self.offset = offset
        self.rng = random.Random(seed)
        self.first = first
        self.last = last

    def start(self, backend, state, draft=None):
        self.first = backend.action_tokenizer.first_token
        self.last = backend.action_tokenizer.vocab_size - 1
        return _Session(self, self.truth_of())

    def _wrong(self, true_token, k):
        token = true_token + self.offset + k
        if token > self.last:
            token = true_token - self.offset - k
        return token

    def make_tree(self, tokens, truth, depth):
        start = len(tokens)
        tree_tokens, parents = [], []
        parent = -1
        for level in range(depth):
            true_token = truth[start + level]
            if self.kind == "oracle":
                main = true_token
                others = [self._wrong(true_token, k) for k in range(self.siblings - 1)]
                # The right token is not always the first sibling.
                siblings = others[:]
                siblings.insert(self.rng.randrange(len(others) + 1), main)
            elif self.kind == "adversarial":
                siblings = [self._wrong(true_token, k) for k in range(self.siblings)]
                main = siblings[0]
            else:
                siblings = self.rng.sample(range(self.first, self.last + 1), self.siblings)
                main = siblings[0]
            main_index = None
            for token in siblings:
                tree_tokens.append(token)
                parents.append(parent)
                if token == main and main_index is None:
                    main_index = len(tree_tokens) - 1
            parent = main_index
        return DraftTree(tree_tokens, parents, [0.0] * len(tree_tokens))
