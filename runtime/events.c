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
#include <time.h>
#include <unistd.h>

enum { K_UINT, K_SINT, K_STR, K_ADDR };
enum { D_NONE, D_NAMES, D_HEX, D_DURATION, D_WALLTIME, D_KSTACK, D_CGROUP, D_CONTAINER, D_POD };

#define CGROUP_TEXT 4096 /* room for a cgroup id's text on the stack (PATH_MAX); longer: malloc */

#define STACK_DEPTH 127 /* the stack map's value: this many addresses, unused ones 0 (codegen/templates/maps.c.j2) */
#define FRAME_INDENT "        "

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
	/* walltime: the record holds bpf_ktime_get_boot_ns(); + wall_offset (REALTIME - BOOTTIME, taken once at
	 * start) is nanoseconds since the epoch */
	int64_t wall_offset;
	/* emit kstack: the record holds a stack id in hq_stacks (or -errno); frames are read with lookup
	 * (libbpf's bpf_map_lookup_elem) and symbolised with the kallsyms table (runtime/ksyms.py), sorted by
	 * address; names as UTF-8 (invalid bytes already U+FFFD), NUL-separated in sym_names at sym_off[i] */
	int32_t stack_fd;
	int (*lookup)(int fd, const void *key, void *value);
	const uint64_t *sym_addr;
	const uint32_t *sym_off;
	const char *sym_names;
	uint64_t n_syms;
	int64_t wall_sec; /* the second wall_text holds (-1: none yet) */
	char wall_text[8];
	/* cgroup, container, pod: the record holds a cgroup id; resolve writes its text (a path, a container id,
	 * a pod uid: runtime/cgroups.py, called back in Python) to buf and returns its length (< 0: print the id).
	 * Only records with such a value call it. */
	int64_t (*resolve)(uint64_t id, uint32_t display, char *buf, uint32_t cap);
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
	} else if (cp == 0x061C || cp == 0x200E || cp == 0x200F || (cp >= 0x202A && cp <= 0x202E) ||
		   (cp >= 0x2066 && cp <= 0x2069) || cp == 0x2028 || cp == 0x2029) {
		/* bidirectional controls and line separators, as runtime/escape.py: they change what the
		 * text around them looks like */
		char b[6] = {'\\', 'u', digits[cp >> 12], digits[(cp >> 8) & 15], digits[(cp >> 4) & 15], digits[cp & 15]};
		put(o, b, 6);
	} else if (cp == 0xFFFD) {
		put_utf8(o, cp); /* an invalid sequence, replaced */
	} else {
		put(o, (const char *)raw, used); /* printable: the bytes as they are */
	}
}

static void put_chars(struct hq_out *o, const uint8_t *s, size_t n)
{
	for (size_t i = 0; i < n;) {
		uint32_t cp;
		size_t used = utf8_next(s + i, n - i, &cp);
		if (o->json)
			put_json_char(o, cp);
		else
			put_text_char(o, cp, s + i, used);
		i += used;
	}
}

static void put_str(struct hq_out *o, const uint8_t *s, size_t size)
{
	const uint8_t *nul = memchr(s, 0, size);
	size_t n = nul ? (size_t)(nul - s) : size;

	if (o->json)
		put(o, "\"", 1);
	put_chars(o, s, n);
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

/* walltime: HH:MM:SS in local time in text (as bcc's tools' TIME column), seconds since the epoch with six
 * decimals (microseconds, truncated) in JSON. */
static void put_walltime(struct hq_out *o, uint64_t boot_ns)
{
	int64_t ns = (int64_t)boot_ns + o->wall_offset;
	int64_t sec = ns >= 0 ? ns / 1000000000 : -((-ns + 999999999) / 1000000000);
	uint64_t frac = (uint64_t)(ns - sec * 1000000000);

	if (o->json) {
		char d[7];
		put_i64(o, sec);
		d[0] = '.';
		for (int i = 6, us = (int)(frac / 1000); i >= 1; i--, us /= 10)
			d[i] = (char)('0' + us % 10);
		put(o, d, 7);
		return;
	}
	if (sec != o->wall_sec) {
		time_t t = (time_t)sec;
		struct tm tm;
		if (o->wall_sec == -1)
			tzset();
		if (!localtime_r(&t, &tm))
			memset(&tm, 0, sizeof(tm));
		o->wall_text[0] = '0' + tm.tm_hour / 10 % 10, o->wall_text[1] = '0' + tm.tm_hour % 10;
		o->wall_text[2] = ':';
		o->wall_text[3] = '0' + tm.tm_min / 10 % 10, o->wall_text[4] = '0' + tm.tm_min % 10;
		o->wall_text[5] = ':';
		o->wall_text[6] = '0' + tm.tm_sec / 10 % 10, o->wall_text[7] = '0' + tm.tm_sec % 10;
		o->wall_sec = sec;
	}
	put(o, o->wall_text, 8);
}

/* The symbol at or below ip: its index + 1, or 0 when none (bisect_right - 1, as runtime/ksyms.py). */
static uint64_t sym_at(const struct hq_out *o, uint64_t ip)
{
	uint64_t lo = 0, hi = o->n_syms;

	while (lo < hi) {
		uint64_t mid = lo + (hi - lo) / 2;
		if (o->sym_addr[mid] <= ip)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

/* One frame as runtime/ksyms.py's KSyms.frame writes it: name+offset (decimal) of the symbol at or below
 * the address, or the address in hex when no symbol covers it; the name escaped as any text. */
static void put_frame(struct hq_out *o, uint64_t ip, uint64_t sym)
{
	if (o->json)
		put(o, "\"", 1);
	if (sym == 0) {
		put(o, "0x", 2);
		put_hex_digits(o, ip);
	} else {
		const char *name = o->sym_names + o->sym_off[sym - 1];
		put_chars(o, (const uint8_t *)name, strlen(name));
		put(o, "+", 1);
		put_u64(o, ip - o->sym_addr[sym - 1]);
	}
	if (o->json)
		put(o, "\"", 1);
}

/* emit kstack: in JSON a list of frames (null when there is no stack); in text, after the event's line,
 * one frame a line, indented, then an empty line (as bpftrace's printf("%s\n", kstack)); no stack prints
 * why (the field's names: -EEXIST -> [no stack: EEXIST (...)]).  0: done; -ENOMEM: out of memory. */
static int put_stack(struct hq_out *o, const struct hq_field *f, const uint8_t *p)
{
	uint64_t ips[STACK_DEPTH];
	int64_t id;
	uint32_t key;
	int n = 0;

	memcpy(&id, p, 8);
	if (id >= 0) {
		key = (uint32_t)id;
		memset(ips, 0, sizeof(ips));
		if (!o->lookup || o->lookup(o->stack_fd, &key, ips) < 0)
			id = -ENOENT; /* never removed during a run: not expected */
	}
	if (id >= 0)
		while (n < STACK_DEPTH && ips[n])
			n++; /* frames end at the first 0 */
	if (o->json) {
		if (id < 0) {
			puts_(o, "null");
			return 0;
		}
		put(o, "[", 1);
	}
	if (id < 0) {
		const char *why = NULL;
		for (uint32_t i = 0; i < f->n_names && !why; i++)
			if (f->names[i].value == id)
				why = f->names[i].text;
		if (reserve(o, 64 + (why ? strlen(why) : 0)))
			return -ENOMEM;
		puts_(o, FRAME_INDENT);
		if (why) {
			puts_(o, why);
		} else {
			puts_(o, "[no stack: ");
			put_i64(o, -id);
			puts_(o, "]");
		}
		puts_(o, "\n\n");
		return 0;
	}
	for (int i = 0; i < n; i++) {
		uint64_t sym = sym_at(o, ips[i]);
		size_t len = sym ? strlen(o->sym_names + o->sym_off[sym - 1]) : 0;
		if (reserve(o, 6 * len + 64)) /* JSON escapes: up to 6 bytes a byte */
			return -ENOMEM;
		if (o->json)
			puts_(o, i ? ", " : "");
		else
			puts_(o, FRAME_INDENT);
		put_frame(o, ips[i], sym);
		if (!o->json)
			put(o, "\n", 1);
	}
	if (reserve(o, 4))
		return -ENOMEM;
	if (o->json)
		put(o, "]", 1);
	else
		put(o, "\n", 1); /* an empty line ends the event */
	return 0;
}

/* A cgroup id as its text (resolve), as a string: escaped, quoted in JSON; the id when there is no resolver.
 * A text longer than the buffer here (a path deeper than PATH_MAX) is asked for again, whole.
 * 0: done; -ENOMEM: out of memory. */
static int put_cgroup(struct hq_out *o, const struct hq_field *f, const uint8_t *p)
{
	char small[CGROUP_TEXT], *text = small;
	uint64_t id = 0;
	int64_t n = -1;
	int err = 0;

	memcpy(&id, p, f->size < 8 ? f->size : 8);
	if (o->resolve)
		n = o->resolve(id, f->display, small, sizeof(small));
	if (n < 0) {
		put_u64(o, id); /* within what the record reserved for an integer */
		return 0;
	}
	if (n > (int64_t)sizeof(small)) {
		int64_t want = n;
		text = malloc((size_t)want);
		if (!text)
			return -ENOMEM;
		n = o->resolve(id, f->display, text, (uint32_t)want);
		if (n < 0 || n > want)
			n = n < 0 ? 0 : want;
	}
	if (reserve(o, 6 * (uint64_t)n + 2)) { /* JSON escapes: up to 6 bytes a byte */
		err = -ENOMEM;
	} else {
		if (o->json)
			put(o, "\"", 1);
		put_chars(o, (const uint8_t *)text, (size_t)n);
		if (o->json)
			put(o, "\"", 1);
	}
	if (text != small)
		free(text);
	return err;
}

static void put_int(struct hq_out *o, const struct hq_field *f, const uint8_t *p)
{
	uint64_t u = 0;
	int64_t s;

	memcpy(&u, p, f->size); /* little-endian, as the records are */
	if (f->kind == K_SINT && f->size < 8 && (u >> (8 * f->size - 1) & 1))
		u |= ~0ULL << (8 * f->size);
	s = (int64_t)u;
	if (f->display == D_WALLTIME) {
		put_walltime(o, u);
		return;
	}
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
		if (f->display == D_KSTACK && !o->json)
			continue; /* text: under the line */
		puts_(o, f->prefix);
		from = o->len;
		if (f->display == D_KSTACK) {
			/* the frames reserved their own room, out of what the record had reserved: again for the rest */
			if (put_stack(o, f, rec + f->offset) || reserve(o, r->max_text)) {
				o->error = ENOMEM;
				return 0;
			}
			continue;
		}
		if (f->display >= D_CGROUP && f->display <= D_POD) {
			/* as long as its text is: reserved for itself, then again for the rest of the record */
			if (put_cgroup(o, f, rec + f->offset) || reserve(o, r->max_text)) {
				o->error = ENOMEM;
				return 0;
			}
		} else if (f->kind == K_STR)
			put_str(o, rec + f->offset, f->size);
		else if (f->kind == K_ADDR)
			put_addr(o, rec + f->offset);
		else
			put_int(o, f, rec + f->offset);
		if (f->width)
			pad_to(o, from, f->width);
	}
	puts_(o, r->tail);
	for (uint32_t i = 0; i < r->n_fields && !o->json; i++) {
		const struct hq_field *f = &r->fields[i];
		if (f->display != D_KSTACK)
			continue;
		if (reserve(o, strlen(f->prefix) + 1)) {
			o->error = ENOMEM;
			return 0;
		}
		puts_(o, f->prefix); /* text: "  kstack:\n" when the record has several stacks, else "" */
		if (put_stack(o, f, rec + f->offset)) {
			o->error = ENOMEM;
			return 0;
		}
	}
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
