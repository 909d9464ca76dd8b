/* Fuzzes what the trust code parses from others: a certificate request a joining node sends
 * (after its token checked out, but the bytes are still the node's), a certificate chain a head
 * or a peer presents, and a join token's text. Nothing may crash, leak or read out of bounds;
 * whatever is issued names what the CA was asked to name, whatever the request said. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fuzz.h"
#include "jointoken.h"
#include "pki.h"

static struct pki_ca *ca;

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerInitialize(int *argc, char ***argv) {
        char dir[] = "/tmp/fuzz-pki.XXXXXX", cert[64], key[64];
        char *err = NULL;

        (void)argc;
        (void)argv;
        if (!mkdtemp(dir))
                abort();
        snprintf(cert, sizeof cert, "%s/ca.crt", dir);
        snprintf(key, sizeof key, "%s/ca.key", dir);
        if (pki_ca_load(cert, key, true, &ca, &err) < 0)
                abort();
        unlink(cert);
        unlink(key);
        rmdir(dir);
        return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        char *text = malloc(size + 1), *chain = NULL, *err = NULL, *anchor = NULL;
        struct pki_cert_info info;
        struct jointoken t;

        if (!text)
                return 0;
        memcpy(text, data, size);
        text[size] = 0;

        if (pki_ca_issue(ca, text, "node-1", PKI_UNIT_NODE, 7, 3600, &chain, &err) == 0) {
                check(pki_cert_info(chain, &info) == 0);
                check(strcmp(info.name, "node-1") == 0 && strcmp(info.unit, PKI_UNIT_NODE) == 0 && info.serial == 7);
                check(pki_verify_chain(chain, pki_ca_cert_pem(ca), NULL, PKI_UNIT_NODE, NULL, NULL) == 0);
        }
        free(chain);
        free(err);
        err = NULL;
        (void)pki_verify_chain(text, NULL, pki_ca_hash(ca), PKI_UNIT_HEAD, &anchor, &err);
        free(anchor);
        free(err);
        err = NULL;
        (void)pki_verify_chain(text, pki_ca_cert_pem(ca), NULL, PKI_UNIT_NODE, NULL, &err);
        free(err);
        (void)pki_cert_info(text, &info);
        if (jointoken_parse(text, &t) == 0) {
                check(t.secret && t.secret[0]);
                check(strlen(t.ca_hash) == 0 || strlen(t.ca_hash) == PKI_HASH_HEX);
                jointoken_done(&t);
        }
        free(text);
        return 0;
}
