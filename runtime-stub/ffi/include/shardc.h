/* shardc's device runtime as a C library. Generated from runtime-stub/ffi/src/lib.rs by cbindgen;
 * do not edit (a test checks it against the code). */

#ifndef SHARDC_H
#define SHARDC_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

/**
 * Done.
 */
#define SHARDC_OK 0

/**
 * An input is wrong or unreadable (package, cluster file, secret), or a device or the
 * network failed; the message says which.
 */
#define SHARDC_ERR_INPUT 1

/**
 * The call's arguments are wrong: a null pointer, text that is not UTF-8, a buffer
 * too small, an option out of range.
 */
#define SHARDC_ERR_USAGE 2

/**
 * A bug in shardc (a panic, caught at the boundary).
 */
#define SHARDC_ERR_INTERNAL 5

/**
 * One device serving in a background thread; released by `shardc_serve_stop`.
 */
typedef struct ShardcServer ShardcServer;

/**
 * What to generate. Start from `shardc_generate_options()`, which fills in the
 * defaults `shardc-run` uses.
 */
typedef struct ShardcGenerate {
  /**
   * Prompt token ids (none negative), `n_input_ids` of them (at least one).
   */
  const int64_t *input_ids;
  size_t n_input_ids;
  /**
   * New tokens to generate.
   */
  size_t max_new_tokens;
  /**
   * Seconds to wait for a device before giving up on it (above 0, at most a day).
   */
  double timeout_s;
  /**
   * Seconds to wait for every device to answer the session's opening.
   */
  double start_timeout_s;
  /**
   * Non-zero: never move stage boundaries.
   */
  int no_balance;
} ShardcGenerate;

/**
 * How a participant talks to the others.
 */
typedef struct ShardcNet {
  /**
   * File holding the secret every participant shares (at least 16 bytes): frames are
   * encrypted and authenticated with a key derived from it. NULL only with
   * `insecure`.
   */
  const char *secret_file;
  /**
   * Non-zero: frames in the clear, unauthenticated (`secret_file` must be NULL).
   */
  int insecure;
  /**
   * Non-zero: the cluster file may name addresses that are not loopback.
   */
  int allow_remote;
} ShardcNet;

#ifdef __cplusplus
extern "C" {
#endif // __cplusplus

/**
 * The defaults of `shardc-run`: no prompt, 8 new tokens, 5 s per device, 30 s for
 * the devices to start, load balancing on.
 */
struct ShardcGenerate shardc_generate_options(void);

/**
 * The library's version, a static NUL-terminated string.
 */
const char *shardc_version(void);

/**
 * Run every device of the compile output in `out_dir` as a thread of this process
 * (frames encrypted with a random key) and generate greedily from the prompt.
 * Writes the new tokens into `tokens` (room for `tokens_cap`, at least
 * `max_new_tokens`) and their number into `n_tokens`.
 */
int shardc_local(const char *out_dir,
                 const struct ShardcGenerate *options,
                 int64_t *tokens,
                 size_t tokens_cap,
                 size_t *n_tokens,
                 char *err,
                 size_t err_cap);

/**
 * Drive generation as the client of the devices `cluster_file` names (each serving
 * its package of `out_dir`, from `shardc_serve` or `shardc-run serve`). Tokens as for
 * `shardc_local`.
 */
int shardc_generate(const char *out_dir,
                    const char *cluster_file,
                    const struct ShardcNet *net,
                    const struct ShardcGenerate *options,
                    int64_t *tokens,
                    size_t tokens_cap,
                    size_t *n_tokens,
                    char *err,
                    size_t err_cap);

/**
 * Serve `device`'s package of `out_dir` at its `cluster_file` address in a background
 * thread until `shardc_serve_stop`. The output's map and manifests are checked before
 * this returns (a wrong folder or device fails here); a failure after that (a
 * package file whose hash is wrong, an address in use) is what `shardc_serve_stop`
 * returns. On success `*server` is the handle.
 */
int shardc_serve(const char *out_dir,
                 const char *device,
                 const char *cluster_file,
                 const struct ShardcNet *net,
                 struct ShardcServer **server,
                 char *err,
                 size_t err_cap);

/**
 * Stop a device `shardc_serve` started, wait for it and release the handle (NULL is
 * a usage error). Returns how serving ended: `SHARDC_OK`, or the failure that ended it
 * earlier.
 */
int shardc_serve_stop(struct ShardcServer *server, char *err, size_t err_cap);

#ifdef __cplusplus
}  // extern "C"
#endif  // __cplusplus

#endif  /* SHARDC_H */
