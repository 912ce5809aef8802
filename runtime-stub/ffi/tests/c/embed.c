/* A host program embedding shardc's runtime through its C ABI, as an app would.
 *
 *   embed OUT CLUSTER SECRET DEVICE...
 *
 * Prints one line per call: the tokens `shardc_local` and `shardc_generate` (with
 * every DEVICE served by `shardc_serve` in this process) produce for the prompt 1,2,3,
 * then the status and message of calls that must fail. The Rust test that builds
 * this program checks the lines. */
#include <stdio.h>
#include <string.h>

#include "shardc.h"

#define MAX_DEVICES 8
#define TOKENS 8

static void print_tokens(const char *what, const int64_t *tokens, size_t n) {
    printf("%s:", what);
    for (size_t i = 0; i < n; i++) {
        printf("%s%lld", i ? "," : " ", (long long)tokens[i]);
    }
    printf("\n");
}

static void print_failure(const char *what, int status, const char *message) {
    printf("%s: status %d: %s\n", what, status, message);
}

int main(int argc, char **argv) {
    if (argc < 5 || argc - 4 > MAX_DEVICES) {
        fprintf(stderr, "usage: embed OUT CLUSTER SECRET DEVICE...\n");
        return 64;
    }
    const char *out = argv[1], *cluster = argv[2], *secret = argv[3];
    char err[512];
    int64_t prompt[] = {1, 2, 3};
    int64_t tokens[TOKENS];
    size_t n = 0;

    ShardcGenerate options = shardc_generate_options();
    options.input_ids = prompt;
    options.n_input_ids = 3;
    options.max_new_tokens = TOKENS;
    options.no_balance = 1;

    printf("version: %s\n", shardc_version());

    /* Every device in this process. */
    int status = shardc_local(out, &options, tokens, TOKENS, &n, err, sizeof err);
    if (status != SHARDC_OK) {
        print_failure("local", status, err);
        return 1;
    }
    print_tokens("local", tokens, n);

    /* Each device served from this process over TCP, and this process their client. */
    ShardcNet net = {secret, 0, 0};
    ShardcServer *servers[MAX_DEVICES];
    int devices = argc - 4;
    for (int d = 0; d < devices; d++) {
        status = shardc_serve(out, argv[4 + d], cluster, &net, &servers[d], err, sizeof err);
        if (status != SHARDC_OK) {
            print_failure("serve", status, err);
            return 1;
        }
    }
    memset(tokens, 0, sizeof tokens);
    n = 0;
    status = shardc_generate(out, cluster, &net, &options, tokens, TOKENS, &n, err, sizeof err);
    if (status != SHARDC_OK) {
        print_failure("generate", status, err);
    } else {
        print_tokens("generate", tokens, n);
    }
    for (int d = 0; d < devices; d++) {
        int stopped = shardc_serve_stop(servers[d], err, sizeof err);
        if (stopped != SHARDC_OK) {
            print_failure("stop", stopped, err);
        }
    }
    printf("stopped: %d devices\n", devices);

    /* Calls that must fail with a status and a message, never a crash. */
    status = shardc_local("/nonexistent/shardc-output", &options, tokens, TOKENS, &n, err, sizeof err);
    print_failure("bad package path", status, err);
    ShardcServer *server = NULL;
    status = shardc_serve("/nonexistent/shardc-output", argv[4], cluster, &net, &server, err, sizeof err);
    print_failure("serve bad package path", status, err);
    printf("server handle: %s\n", server ? "set" : "NULL");
    status = shardc_serve(out, "no-such-device", cluster, &net, &server, err, sizeof err);
    print_failure("serve unknown device", status, err);
    status = shardc_local(out, &options, tokens, 2, &n, err, sizeof err);
    print_failure("small buffer", status, err);
    status = shardc_local(NULL, &options, tokens, TOKENS, &n, err, sizeof err);
    print_failure("null path", status, err);
    ShardcNet clear_and_secret = {secret, 1, 0};
    status = shardc_generate(out, cluster, &clear_and_secret, &options, tokens, TOKENS, &n, err, sizeof err);
    print_failure("both secret and insecure", status, err);
    char tiny[8];
    status = shardc_local("/nonexistent/shardc-output", &options, tokens, TOKENS, &n, tiny, sizeof tiny);
    printf("tiny buffer: status %d: %zu bytes: %s\n", status, strlen(tiny), tiny);
    status = shardc_serve_stop(NULL, err, sizeof err);
    print_failure("stop NULL", status, err);
    return 0;
}
