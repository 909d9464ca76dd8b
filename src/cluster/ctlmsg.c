#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "ctlmsg.h"
#include "macros.h"

int ctlmsg_encode(struct buf *out, const cJSON *msg) {
        _cleanup_free_ char *text = cJSON_PrintUnformatted(msg);
        size_t n;
        uint8_t hdr[4];

        if (!text)
                return -ENOMEM;
        n = strlen(text);
        if (n == 0 || n > CTLMSG_MAX)
                return -EMSGSIZE;
        hdr[0] = (uint8_t)(n >> 24);
        hdr[1] = (uint8_t)(n >> 16);
        hdr[2] = (uint8_t)(n >> 8);
        hdr[3] = (uint8_t)n;
        if (buf_reserve(out, 4 + n, SIZE_MAX) < 0)
                return -ENOMEM;
        memcpy(out->data + out->len, hdr, 4);
        memcpy(out->data + out->len + 4, text, n);
        out->len += 4 + n;
        return 0;
}

int ctlmsg_peek(const struct buf *in, const char **ret_body, size_t *ret_len) {
        const uint8_t *p = (const uint8_t *)in->data;
        uint32_t n;

        if (in->len < 4)
                return 0;
        n = (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
        if (n == 0 || n > CTLMSG_MAX)
                return -EBADMSG;
        if (in->len - 4 < n)
                return 0;
        *ret_body = in->data + 4;
        *ret_len = n;
        return 1;
}

int ctlmsg_decode(struct buf *in, cJSON **ret, const char **ret_type, const char **ret_error) {
        const uint8_t *p = (const uint8_t *)in->data;
        uint32_t n;
        cJSON *j, *v, *t;

        if (in->len < 4)
                return 0;
        n = (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
        if (n == 0 || n > CTLMSG_MAX) {
                *ret_error = "frame length out of range";
                return -EBADMSG;
        }
        if (in->len - 4 < n)
                return 0;
        j = cJSON_ParseWithLength(in->data + 4, n);
        buf_consume(in, 4 + (size_t)n);
        if (!j || !cJSON_IsObject(j)) {
                cJSON_Delete(j);
                *ret_error = "frame is not a JSON object";
                return -EBADMSG;
        }
        v = cJSON_GetObjectItemCaseSensitive(j, "v");
        if (!cJSON_IsNumber(v) || v->valuedouble != CTLMSG_VERSION) {
                cJSON_Delete(j);
                *ret_error = "unsupported protocol version (want \"v\": 1)";
                return -EBADMSG;
        }
        t = cJSON_GetObjectItemCaseSensitive(j, "type");
        if (!cJSON_IsString(t) || !t->valuestring[0]) {
                cJSON_Delete(j);
                *ret_error = "message without a \"type\"";
                return -EBADMSG;
        }
        *ret_type = t->valuestring;
        *ret = j;
        return 1;
}

static const cJSON *field(const cJSON *o, const char *key) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
        return v && !cJSON_IsNull(v) ? v : NULL;
}

static int bad(char *err, size_t errlen, const char *key, const char *what) {
        snprintf(err, errlen, "field %s: %s", key, what);
        return -EINVAL;
}

int ctl_get_string(const cJSON *o, const char *key, size_t max_len, bool required, const char **ret, char *err,
                   size_t errlen) {
        const cJSON *v = field(o, key);

        if (!v)
                return required ? bad(err, errlen, key, "missing") : 0;
        if (!cJSON_IsString(v))
                return bad(err, errlen, key, "not a string");
        if (strlen(v->valuestring) > max_len)
                return bad(err, errlen, key, "too long");
        *ret = v->valuestring;
        return 0;
}

int ctl_get_double(const cJSON *o, const char *key, double min, double max, bool required, double *ret, char *err,
                   size_t errlen) {
        const cJSON *v = field(o, key);

        if (!v)
                return required ? bad(err, errlen, key, "missing") : 0;
        if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble))
                return bad(err, errlen, key, "not a number");
        if (v->valuedouble < min || v->valuedouble > max)
                return bad(err, errlen, key, "out of range");
        *ret = v->valuedouble;
        return 0;
}

int ctl_get_int(const cJSON *o, const char *key, long long min, long long max, bool required, long long *ret, char *err,
                size_t errlen) {
        double d = 0;
        const cJSON *v = field(o, key);
        int r;

        if (!v)
                return required ? bad(err, errlen, key, "missing") : 0;
        r = ctl_get_double(o, key, (double)min, (double)max, required, &d, err, errlen);
        if (r < 0)
                return r;
        if (d != floor(d))
                return bad(err, errlen, key, "not an integer");
        *ret = (long long)d;
        return 0;
}

int ctl_get_bool(const cJSON *o, const char *key, bool required, bool *ret, char *err, size_t errlen) {
        const cJSON *v = field(o, key);

        if (!v)
                return required ? bad(err, errlen, key, "missing") : 0;
        if (!cJSON_IsBool(v))
                return bad(err, errlen, key, "not a boolean");
        *ret = cJSON_IsTrue(v);
        return 0;
}

int ctl_get_array(const cJSON *o, const char *key, int max_items, bool required, const cJSON **ret, char *err,
                  size_t errlen) {
        const cJSON *v = field(o, key);

        if (!v) {
                if (required)
                        return bad(err, errlen, key, "missing");
                *ret = NULL;
                return 0;
        }
        if (!cJSON_IsArray(v))
                return bad(err, errlen, key, "not an array");
        if (cJSON_GetArraySize(v) > max_items)
                return bad(err, errlen, key, "too many items");
        *ret = v;
        return 0;
}

int ctl_get_object(const cJSON *o, const char *key, bool required, const cJSON **ret, char *err, size_t errlen) {
        const cJSON *v = field(o, key);

        if (!v) {
                if (required)
                        return bad(err, errlen, key, "missing");
                *ret = NULL;
                return 0;
        }
        if (!cJSON_IsObject(v))
                return bad(err, errlen, key, "not an object");
        *ret = v;
        return 0;
}

cJSON *ctlmsg_new(const char *type) {
        cJSON *j = cJSON_CreateObject();
        if (!j)
                return NULL;
        if (!cJSON_AddNumberToObject(j, "v", CTLMSG_VERSION) || !cJSON_AddStringToObject(j, "type", type)) {
                cJSON_Delete(j);
                return NULL;
        }
        return j;
}
