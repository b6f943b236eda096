"""Outbound mail: PHI-free notifications rendered, signed and delivered from the queue.

The flow (see docs/architecture.md)::

    notify.enqueue -> notification row (queued)
        -> queue.claim (lease)  -> links.mint (tokens)  -> render (templates)
        -> headers.build -> dkim.sign -> transport (relay / MX / maildir)
        -> queue.record (sent | deferred | bounced | failed)
"""
