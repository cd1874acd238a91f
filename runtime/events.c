/* Prints emitted ring-buffer records as text or JSON lines, in C.
 *
 * libbpf's ring_buffer__poll calls hq_ev_sample once per record, so no Python
 * runs per event: a Python callback capped streaming near 300k events/s and
 * the ring buffer overflowed above that.  What each record holds and how each
 * value prints (the plan) comes from runtime/events.py, built from the same
 * layout the BPF C was generated from; output matches runtime/output.py.
 */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

enum { K_UINT, K_SINT, K_STR, K_ADDR };
enum { D_NONE, D_NAMES, D_HEX, D_DURATION };

struct hq_name {
	int64_t value;
	const char *text; /* as it prints in this mode: AF_INET, or "AF_INET" in JSON */
};

struct hq_field {
	uint32_t offset, size, kind, display;
	const char *prefix; /* separator and name: "comm=", " pid=", "\"comm\": ", ", \"pid\": " */
	const struct hq_name *names;
	uint32_t n_names;
	uint32_t width; /* columns: pad the value with spaces to this many characters (0: no padding) */
};

struct hq_record {
	const char *head, *tail; /* JSON: {"probe": ..., "event": {  and  }}\n; text: "" and \n */
	uint32_t size, n_fields;
	uint32_t max_text; /* the most text one record can print as (with the header) */
	const struct hq_field *fields;
	const char *header; /* columns: the header line, printed before the first of a run of these records */
};

struct hq_out {
	int32_t fd; /* -1: keep the text in buf for the caller to take */
	int32_t json;
	uint32_t n_records;
	const struct hq_record *records;
	char *buf;
	uint64_t len, cap;
	uint64_t events, bad; /* printed; could not be decoded (unknown id, short record) */
	int32_t error;        /* errno of a failed write: output stops, the caller reports it */
	uint32_t last;        /* the id of the record printed last (~0: none, or tables came between) */
};

#define FLUSH_AT (64 * 1024)

static int reserve(struct hq_out *o, uint64_t n)
{
	if (o->len + n <= o->cap)
		return 0;
	uint64_t cap = o->cap ? o->cap : 2 * FLUSH_AT;
	while (cap < o->len + n)
		cap *= 2;
	char *b = realloc(o->buf, cap);
	if (!b)
		return -ENOMEM;
	o->buf = b;
	o->cap = cap;
	return 0;
}

static void put(struct hq_out *o, const char *s, size_t n)
{
	memcpy(o->buf + o->len, s, n);
	o->len += n;
}

static void puts_(struct hq_out *o, const char *s)
{
	put(o, s, strlen(s));
}

static void put_u64(struct hq_out *o, uint64_t v)
{
	char tmp[20];
	int i = sizeof(tmp);
	do
		tmp[--i] = '0' + v % 10;
	while (v /= 10);
	put(o, tmp + i, sizeof(tmp) - i);
}

static void put_i64(struct hq_out *o, int64_t v)
{
	if (v < 0) {
		put(o, "-", 1);
		put_u64(o, -(uint64_t)v);
	} else {
		put_u64(o, v);
	}
}

static void put_hex_digits(struct hq_out *o, uint64_t v) /* lowercase, no padding */
{
	static const char digits[] = "0123456789abcdef";
	char tmp[16];
	int i = sizeof(tmp);
	do
		tmp[--i] = digits[v & 15];
	while (v >>= 4);
	put(o, tmp + i, sizeof(tmp) - i);
}

/* One code point of UTF-8 with Python's errors="replace": an invalid byte
 * sequence becomes U+FFFD per maximal subpart (Unicode 3.9, table 3-7). */
static size_t utf8_next(const uint8_t *s, size_t n, uint32_t *cp)
{
	uint8_t c = s[0], lo = 0x80, hi = 0xBF;
	uint32_t need, v;

	if (c < 0x80) {
		*cp = c;
		return 1;
	}
	if (c >= 0xC2 && c <= 0xDF) {
		need = 1, v = c & 0x1F;
	} else if (c >= 0xE0 && c <= 0xEF) {
		need = 2, v = c & 0x0F;
		if (c == 0xE0)
			lo = 0xA0;
		if (c == 0xED)
			hi = 0x9F; /* no surrogates */
	} else if (c >= 0xF0 && c <= 0xF4) {
		need = 3, v = c & 0x07;
		if (c == 0xF0)
			lo = 0x90;
		if (c == 0xF4)
			hi = 0x8F; /* nothing past U+10FFFF */
	} else {
		*cp = 0xFFFD;
		return 1;
	}
	for (uint32_t i = 1; i <= need; i++) {
		if (i >= n || s[i] < lo || s[i] > hi) {
			*cp = 0xFFFD;
			return i;
		}
		v = v << 6 | (s[i] & 0x3F);
		lo = 0x80, hi = 0xBF;
	}
	*cp = v;
	return need + 1;
}

static void put_utf8(struct hq_out *o, uint32_t cp)
{
	char b[4];
	if (cp < 0x80) {
		b[0] = cp;
		put(o, b, 1);
	} else if (cp < 0x800) {
		b[0] = 0xC0 | cp >> 6, b[1] = 0x80 | (cp & 0x3F);
		put(o, b, 2);
	} else if (cp < 0x10000) {
		b[0] = 0xE0 | cp >> 12, b[1] = 0x80 | (cp >> 6 & 0x3F), b[2] = 0x80 | (cp & 0x3F);
		put(o, b, 3);
	} else {
		b[0] = 0xF0 | cp >> 18, b[1] = 0x80 | (cp >> 12 & 0x3F), b[2] = 0x80 | (cp >> 6 & 0x3F);
		b[3] = 0x80 | (cp & 0x3F);
		put(o, b, 4);
	}
}

static void put_u_escape(struct hq_out *o, uint32_t unit)
{
	static const char digits[] = "0123456789abcdef";
	char b[6] = {'\\', 'u', digits[unit >> 12 & 15], digits[unit >> 8 & 15], digits[unit >> 4 & 15],
		     digits[unit & 15]};
	put(o, b, 6);
}

/* JSON as Python's json.dumps writes it (ensure_ascii: everything outside ' '..'~' is escaped, DEL too). */
static void put_json_char(struct hq_out *o, uint32_t cp)
{
	switch (cp) {
	case '"': puts_(o, "\\\""); return;
	case '\\': puts_(o, "\\\\"); return;
	case '\n': puts_(o, "\\n"); return;
	case '\r': puts_(o, "\\r"); return;
	case '\t': puts_(o, "\\t"); return;
	case '\b': puts_(o, "\\b"); return;
	case '\f': puts_(o, "\\f"); return;
	}
	if (cp < 0x20 || (cp >= 0x7F && cp < 0x10000)) {
		put_u_escape(o, cp);
	} else if (cp >= 0x10000) {
		cp -= 0x10000;
		put_u_escape(o, 0xD800 | cp >> 10);
		put_u_escape(o, 0xDC00 | (cp & 0x3FF));
	} else {
		char c = cp;
		put(o, &c, 1);
	}
}

/* Text mode, as runtime/escape.py's escape_text: a backslash as \\, newline,
 * tab and CR as \n \t \r, every other C0 control, DEL and C1 control
 * (U+0080-U+009F) as \xHH; printable UTF-8 as its bytes; an invalid sequence
 * as U+FFFD.  No control character reaches the terminal raw. */
static void put_text_char(struct hq_out *o, uint32_t cp, const uint8_t *raw, size_t used)
{
	static const char digits[] = "0123456789abcdef";

	switch (cp) {
	case '\\': puts_(o, "\\\\"); return;
	case '\n': puts_(o, "\\n"); return;
	case '\t': puts_(o, "\\t"); return;
	case '\r': puts_(o, "\\r"); return;
	}
	if (cp < 0x20 || (cp >= 0x7F && cp < 0xA0)) {
		char b[4] = {'\\', 'x', digits[cp >> 4], digits[cp & 15]};
		put(o, b, 4);
	} else if (cp == 0xFFFD) {
		put_utf8(o, cp); /* an invalid sequence, replaced */
	} else {
		put(o, (const char *)raw, used); /* printable: the bytes as they are */
	}
}

static void put_str(struct hq_out *o, const uint8_t *s, size_t size)
{
	const uint8_t *nul = memchr(s, 0, size);
	size_t n = nul ? (size_t)(nul - s) : size;

	if (o->json)
		put(o, "\"", 1);
	for (size_t i = 0; i < n;) {
		uint32_t cp;
		size_t used = utf8_next(s + i, n - i, &cp);
		if (o->json)
			put_json_char(o, cp);
		else
			put_text_char(o, cp, s + i, used);
		i += used;
	}
	if (o->json)
		put(o, "\"", 1);
}

/* As Python's ipaddress prints it: IPv4-mapped as a.b.c.d, otherwise IPv6
 * with the first longest run (of two or more) of zero groups as "::". */
static void put_addr(struct hq_out *o, const uint8_t *a)
{
	static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
	int best = -1, best_len = 0;
	uint16_t w[8];

	if (o->json)
		put(o, "\"", 1);
	if (!memcmp(a, mapped, 12)) {
		for (int i = 12; i < 16; i++) {
			if (i > 12)
				put(o, ".", 1);
			put_u64(o, a[i]);
		}
		goto out;
	}
	for (int i = 0; i < 8; i++)
		w[i] = a[2 * i] << 8 | a[2 * i + 1];
	for (int i = 0; i < 8;) {
		int j = i;
		while (j < 8 && !w[j])
			j++;
		if (j - i > best_len)
			best = i, best_len = j - i;
		i = j > i ? j : i + 1;
	}
	if (best_len < 2)
		best = -1;
	for (int i = 0; i < 8; i++) {
		if (i == best) {
			put(o, "::", 2);
			i += best_len - 1;
			continue;
		}
		if (i && i != best + best_len)
			put(o, ":", 1);
		put_hex_digits(o, w[i]);
	}
out:
	if (o->json)
		put(o, "\"", 1);
}

/* Columns: spaces after a value that began at `from`, up to `width` characters (UTF-8 code points; an
 * escape such as \x1b counts as the 4 characters it prints as).  A longer value is not cut. */
static void pad_to(struct hq_out *o, uint64_t from, uint32_t width)
{
	uint32_t chars = 0;
	for (uint64_t i = from; i < o->len; i++)
		chars += ((uint8_t)o->buf[i] & 0xC0) != 0x80;
	while (chars < width) {
		put(o, " ", 1);
		chars++;
	}
}

/* A duration in nanoseconds as runtime/decode.py's duration_text writes it: 950ns, 1.5us, 12.345ms, 2s. */
static void put_duration(struct hq_out *o, uint64_t v)
{
	static const uint64_t sizes[] = {1000000000ULL, 1000000ULL, 1000ULL};
	static const char *const units[] = {"s", "ms", "us"};

	for (int i = 0; i < 3; i++) {
		if (v >= sizes[i]) {
			uint64_t frac = (v % sizes[i]) * 1000 / sizes[i];
			put_u64(o, v / sizes[i]);
			if (frac) {
				char d[4] = {'.', (char)('0' + frac / 100), (char)('0' + frac / 10 % 10), (char)('0' + frac % 10)};
				size_t n = 4;
				while (d[n - 1] == '0')
					n--;
				put(o, d, n);
			}
			puts_(o, units[i]);
			return;
		}
	}
	put_u64(o, v);
	put(o, "ns", 2);
}

static void put_int(struct hq_out *o, const struct hq_field *f, const uint8_t *p)
{
	uint64_t u = 0;
	int64_t s;

	memcpy(&u, p, f->size); /* little-endian, as the records are */
	if (f->kind == K_SINT && f->size < 8 && (u >> (8 * f->size - 1) & 1))
		u |= ~0ULL << (8 * f->size);
	s = (int64_t)u;
	if (f->display == D_NAMES) {
		for (uint32_t i = 0; i < f->n_names; i++) {
			if (f->names[i].value == (f->kind == K_SINT ? s : (int64_t)u)) {
				puts_(o, f->names[i].text);
				return;
			}
		}
	}
	if (f->display == D_DURATION && !o->json) {
		if (f->kind == K_SINT && s < 0) {
			put(o, "-", 1);
			put_duration(o, -(uint64_t)s);
		} else {
			put_duration(o, u);
		}
		return;
	}
	if (f->display == D_HEX) {
		if (o->json)
			put(o, "\"", 1);
		if (f->kind == K_SINT && s < 0) { /* Python's hex(): -0x1f */
			put(o, "-0x", 3);
			put_hex_digits(o, -(uint64_t)s);
		} else {
			put(o, "0x", 2);
			put_hex_digits(o, u);
		}
		if (o->json)
			put(o, "\"", 1);
		return;
	}
	if (f->kind == K_SINT)
		put_i64(o, s);
	else
		put_u64(o, u);
}

int hq_ev_flush(struct hq_out *o)
{
	uint64_t done = 0;

	if (o->fd < 0 || o->error) {
		if (o->error)
			o->len = 0;
		return -o->error;
	}
	while (done < o->len) {
		ssize_t n = write(o->fd, o->buf + done, o->len - done);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			o->error = errno;
			break;
		}
		done += n;
	}
	o->len = 0;
	return -o->error;
}

/* ring_buffer_sample_fn: ctx is the hq_out. */
int hq_ev_sample(void *ctx, void *data, size_t size)
{
	struct hq_out *o = ctx;
	const uint8_t *rec = data;
	uint32_t id;

	if (o->error)
		return 0;
	if (size < 4 || (memcpy(&id, rec, 4), id >= o->n_records) || size < o->records[id].size) {
		o->bad++;
		return 0;
	}
	const struct hq_record *r = &o->records[id];
	if (reserve(o, r->max_text)) {
		o->error = ENOMEM;
		return 0;
	}
	if (r->header && o->last != id)
		puts_(o, r->header);
	o->last = id;
	puts_(o, r->head);
	for (uint32_t i = 0; i < r->n_fields; i++) {
		const struct hq_field *f = &r->fields[i];
		uint64_t from;
		puts_(o, f->prefix);
		from = o->len;
		if (f->kind == K_STR)
			put_str(o, rec + f->offset, f->size);
		else if (f->kind == K_ADDR)
			put_addr(o, rec + f->offset);
		else
			put_int(o, f, rec + f->offset);
		if (f->width)
			pad_to(o, from, f->width);
	}
	puts_(o, r->tail);
	o->events++;
	if (o->fd >= 0 && o->len >= FLUSH_AT)
		hq_ev_flush(o);
	return 0;
}

void hq_ev_free(struct hq_out *o)
{
	free(o->buf);
	o->buf = NULL;
	o->len = o->cap = 0;
}
