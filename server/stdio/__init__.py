"""The stdio transport, low level first:

    fd          the client's pipes as private descriptors (claim, poll, write whole)
    lines       bytes -> capped lines (an over-long line is skipped, never held whole)
    wire        async line reader and writer on the event loop
    handshake   the signed handshake cache and the fingerprint that keys it
    recorder    records the server's handshake answers; corrects early ones that were stale
    front       the fast start: answers the handshake from the cache while the SDK imports
    session     one session after the handover: parse once, feed the SDK, stop gracefully
    serve       builds the server and runs the session (the only module here that knows the app)

Each module imports only those above it in this list. `fd`, `lines`, `handshake`, `recorder`
and `front` use the standard library and the bounded parser only: they run before the SDK
is imported.
"""
