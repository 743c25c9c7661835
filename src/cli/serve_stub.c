/*
 * tern serve — placeholder until the daemon lands (DESIGN.md §6). Replace
 * this file with serve.c (same entry point, tern_cli_serve()).
 */
#include <stdio.h>
#include <sysexits.h>

#include "cli.h"

int tern_cli_serve(int argc, char **argv) {
  (void)argc;
  (void)argv;
  fprintf(stderr, "tern serve: not built yet\n");
  return EX_UNAVAILABLE;
}
