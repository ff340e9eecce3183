/*
 * ocbprobe: the CVE-2026-45445 probe, a long-running program linked against the
 * package's libcrypto. For each line "ocb" on stdin it encrypts one 32-byte message with
 * AES-128-OCB under one key and two IVs through the one-shot EVP_Cipher() and, as a
 * reference, through EVP_EncryptUpdate/Final, and prints one line:
 *   "ivs=same|differ oneshot=streaming|nonce-ignored"
 * 3.0.20 ignores the IV on the EVP_Cipher() path: both IVs give the same ciphertext, and
 * it differs from the streaming one. Fixed: the IVs give different ciphertexts and the
 * one-shot output equals the streaming output.
 */
#include <stdio.h>
#include <string.h>
#include <openssl/evp.h>
#include <openssl/opensslv.h>

static const unsigned char key[16] = "0123456789abcdef";
static const unsigned char msg[32] = "thirty-two bytes of plaintext!!";

/* encrypt writes the 32-byte ciphertext of msg under iv, one-shot or streaming. */
static int encrypt(const unsigned char iv[12], int oneshot, unsigned char out[32])
{
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    int ok = 0, n = 0, m = 0;

    if (ctx == NULL || !EVP_EncryptInit_ex(ctx, EVP_aes_128_ocb(), NULL, key, iv))
        goto done;
    if (oneshot) {
        ok = EVP_Cipher(ctx, out, msg, sizeof(msg)) > 0;
    } else {
        ok = EVP_EncryptUpdate(ctx, out, &n, msg, sizeof(msg))
            && EVP_EncryptFinal_ex(ctx, out + n, &m) && n + m == (int)sizeof(msg);
    }
done:
    EVP_CIPHER_CTX_free(ctx);
    return ok;
}

int main(void)
{
    char line[64];
    const unsigned char iv1[12] = "nonce-one-01", iv2[12] = "nonce-two-02";
    unsigned char a[32], b[32], s[32];

    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("%s\n", OPENSSL_VERSION_TEXT);
    while (fgets(line, sizeof(line), stdin) != NULL) {
        if (strcmp(line, "ocb\n") != 0) {
            printf("unknown command\n");
            continue;
        }
        if (!encrypt(iv1, 1, a) || !encrypt(iv2, 1, b) || !encrypt(iv1, 0, s)) {
            printf("error\n");
            continue;
        }
        printf("ivs=%s oneshot=%s\n", memcmp(a, b, 32) == 0 ? "same" : "differ",
               memcmp(a, s, 32) == 0 ? "streaming" : "nonce-ignored");
    }
    return 0;
}
