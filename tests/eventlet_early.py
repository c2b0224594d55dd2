"""Imported by the eventlet child *before* monkey patching: a lock made with native primitives."""

import fairlock

EARLY_LOCK = fairlock.Lock("made-before-monkey-patch")
