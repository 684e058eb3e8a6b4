"""The kit every other package builds on: the product's errors, the one HTTP error body, the
OpenAI error shape, the Litestar exception handlers and the OpenAPI helpers. It imports nothing
of dropwire's own, so storage, the handler SDK, the domains, the emulator and the runtime may
all use it."""
