/*
 * sink — accepts every message and discards it. The counterpart of
 * Postfix's smtp-sink, used by the benchmarks.
 *
 *   ./sink [smtp://127.0.0.1:2525] [--workers N] [--tls-cert F --tls-key F]
 */
#include "example_common.h"

int main(int argc, char **argv) {
  struct example_args a;
  struct tern_server_callbacks cb;
  struct tern_server_options o;

  if (example_parse(argc, argv, &a))
    return 2;
  tern_server_callbacks_init(&cb); /* every decision: accept */
  tern_server_options_init(&o);
  o.callbacks = &cb;
  o.max_connections = 100000;
  return example_run(&a, &o);
}
