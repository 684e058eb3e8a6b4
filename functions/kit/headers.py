"""HTTP headers that are part of dropwire's own contract between its processes."""

#: Puts a request on the runtime's background lane ("background"); absent or "interactive" is the
#: interactive lane. Batch workers send it; the gateway's inference proxy forwards it.
PRIORITY_HEADER = "X-Dropwire-Priority"
