"""Hypothesis strategies for hostile mail, names, subjects and addresses.

Shapes come from what breaks mail software in practice: line breaks and NULs in header
values (header and SMTP command injection), RFC 2047 encoded words hiding CRLF, unknown and
stateful charsets, broken base64 and quoted-printable, MIME bombs (deep nesting, thousands of
parts or headers), over-long lines, and plain random bytes.
"""

from __future__ import annotations

from hypothesis import strategies as st

_NASTY_CHARS = "\r\n\x00\t\x0b\x0c\x1b\u2028\u2029\u0085\ufeff<>\"',;:@\\=?%."
_ENCODED_CRLF = ["=?utf-8?b?DQpCY2M6IGV2aWxAZXhhbXBsZS5vcmc=?=", "=?utf-8?q?x=0D=0ABcc:_e@x?="]
_INJECTIONS = [
    "\r\nBcc: evil@example.org",
    "\nX-Injected: 1",
    "\r\n\r\nbody takeover",
    "\r\n.\r\nMAIL FROM:<evil@example.org>\r\n",
    "\n.\nRCPT TO:<evil@example.org>\n",
    "\rSubject: second",
]

hostile_text = st.one_of(
    st.text(max_size=200),
    st.text(alphabet=st.sampled_from(_NASTY_CHARS) | st.characters(), max_size=120),
    st.builds(
        lambda a, inj, b: a + inj + b,
        st.text(max_size=40),
        st.sampled_from(_INJECTIONS + _ENCODED_CRLF),
        st.text(max_size=40),
    ),
    st.sampled_from(["", " ", "x" * 2000, "é" * 500, "\u202e" + "gnp.exe", *_ENCODED_CRLF]),
)

_local = st.text(
    alphabet=st.sampled_from("abcxyz019.+-_!#$%&'*/=?^`{|}~\r\n\x00 \"(),:;<>@[\\]é"),
    min_size=1,
    max_size=40,
)
_domain = st.one_of(
    st.sampled_from(["example.org", "EXAMPLE.org", "xn--bcher-kva.example", "bücher.example"]),
    st.text(alphabet=st.sampled_from("abc-.\r\n\x00 é0"), min_size=1, max_size=30),
)
hostile_address = st.one_of(
    st.builds(lambda loc, dom: f"{loc}@{dom}", _local, _domain),
    st.builds(lambda a, inj: a + inj, st.just("pat@example.org"), st.sampled_from(_INJECTIONS)),
    st.text(max_size=80),
)

_HEADER_NAMES = [
    "From",
    "To",
    "Cc",
    "Subject",
    "Message-ID",
    "Date",
    "Content-Type",
    "Content-Transfer-Encoding",
    "MIME-Version",
    "Auto-Submitted",
    "Precedence",
    "Return-Path",
    "Authentication-Results",
    "DKIM-Signature",
    "Received",
    "In-Reply-To",
    "References",
]
_CHARSETS = ["utf-8", "us-ascii", "iso-8859-1", "utf-7", "iso-2022-jp", "x-unknown", "", "utf-16"]
_CTE = ["7bit", "8bit", "base64", "quoted-printable", "binary", "x-uuencode", "bogus"]


def _header_block(pairs: list[tuple[str, str]]) -> bytes:
    return b"".join(
        n.encode("utf-8", "surrogatepass") + b": " + v.encode("utf-8", "surrogatepass") + b"\r\n"
        for n, v in pairs
    )


_headers = st.lists(
    st.tuples(
        st.sampled_from(_HEADER_NAMES) | st.text(alphabet="abcXYZ-:", min_size=1, max_size=20),
        hostile_text,
    ),
    max_size=15,
)


@st.composite
def _mime(draw: st.DrawFn) -> bytes:
    boundary = draw(st.sampled_from(["b1", "", "b1\r\nX: y", "=_", "a" * 100]))
    parts = []
    for _ in range(draw(st.integers(0, 4))):
        charset = draw(st.sampled_from(_CHARSETS))
        cte = draw(st.sampled_from(_CTE))
        ctype = draw(
            st.sampled_from(
                ["text/plain", "text/html", "application/pdf", "message/rfc822", "multipart/mixed"]
            )
        )
        body = draw(st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
        parts.append(
            f"--{boundary}\r\nContent-Type: {ctype}; charset={charset}\r\n"
            f"Content-Transfer-Encoding: {cte}\r\n\r\n".encode()
            + body
            + b"\r\n"
        )
    head = _header_block(draw(_headers))
    return (
        head
        + b"MIME-Version: 1.0\r\n"
        + f'Content-Type: multipart/mixed; boundary="{boundary}"\r\n\r\n'.encode()
        + b"".join(parts)
        + draw(st.sampled_from([f"--{boundary}--\r\n".encode(), b""]))
    )


def _bombs() -> list[bytes]:
    nested = b"Content-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\n" * 300
    return [
        b"From: a@example.org\r\nSubject: deep\r\nMIME-Version: 1.0\r\n" + nested,
        b"".join(b"X-H%d: v\r\n" % i for i in range(5000)) + b"\r\nbody\r\n",
        b"Subject: " + b"a" * 70_000 + b"\r\n\r\nbody\r\n",
        b"From: a@example.org\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; "
        b"boundary=z\r\n\r\n"
        + b"--z\r\nContent-Type: text/plain\r\n\r\nx\r\n" * 3000
        + b"--z--\r\n",
        b"From: " + b"<a@b>," * 5000 + b"\r\n\r\nx\r\n",
        b"\r\n\r\n",
        b"",
        b"From: =?utf-8?b?" + b"QUFB" * 10000 + b"?= <a@example.org>\r\n\r\nx\r\n",
    ]


hostile_mail = st.one_of(
    st.binary(max_size=3000),
    st.builds(lambda h, b: _header_block(h) + b"\r\n" + b, _headers, st.binary(max_size=1000)),
    _mime(),
    st.sampled_from(_bombs()),
)
