/*
 * Shared by the SASL unit tests (test_sasl.c, test_sasl_client.c):
 * tern__sasl_step with a PLAIN/LOGIN password check (TERN__SASL_VERIFY)
 * done at once, as the runtime does on its thread pool. Include after
 * <cmocka.h> and "sasl_internal.h".
 */
#ifndef TERN_TEST_SASL_STEP_H
#define TERN_TEST_SASL_STEP_H

/* A fake session pointer: the provider only passes it through. */
static struct tern_server_session *const SESS =
    (struct tern_server_session *)(uintptr_t)0x5e55;

static int sstep(struct tern__sasl *sasl, struct tern__sasl_session **sess,
                 struct tern_server_session *s, const char *mech,
                 const char *b64, size_t len, bool has_response,
                 const char **challenge) {
  int rc = tern__sasl_step(sasl, sess, s, mech, b64, len, has_response,
                           challenge);
  if (rc == TERN__SASL_VERIFY) {
    assert_null(tern__sasl_user(*sess));
    tern__sasl_verify(*sess);
    rc = tern__sasl_verify_done(*sess);
  }
  return rc;
}

#endif
