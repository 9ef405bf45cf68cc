//! The one field keygate reads from a certificate itself: the leaf's `notAfter`, for
//! `tls_cert_expiry_timestamp_seconds`, by a minimal DER walk (no X.509 parser needed).

/// The `notAfter` of an X.509 certificate in DER, in Unix seconds; `None` when the DER is
/// not shaped like a certificate. A minimal walk: Certificate → tbsCertificate → (version,
/// serialNumber, signature, issuer) → validity → notAfter, a UTCTime or GeneralizedTime.
pub fn not_after(cert_der: &[u8]) -> Option<i64> {
    const SEQUENCE: u8 = 0x30;
    const INTEGER: u8 = 0x02;
    const VERSION: u8 = 0xa0; // [0] EXPLICIT
    let (tag, certificate, _) = der_element(cert_der)?;
    if tag != SEQUENCE {
        return None;
    }
    let (tag, tbs, _) = der_element(certificate)?;
    if tag != SEQUENCE {
        return None;
    }
    let (mut tag, mut body, mut rest) = der_element(tbs)?;
    if tag == VERSION {
        (tag, body, rest) = der_element(rest)?;
    }
    let _serial = (tag == INTEGER).then_some(body)?;
    let (tag, _signature, rest) = der_element(rest)?;
    if tag != SEQUENCE {
        return None;
    }
    let (tag, _issuer, rest) = der_element(rest)?;
    if tag != SEQUENCE {
        return None;
    }
    let (tag, validity, _) = der_element(rest)?;
    if tag != SEQUENCE {
        return None;
    }
    let (_, _not_before, rest) = der_element(validity)?;
    let (tag, time, _) = der_element(rest)?;
    der_time(tag, time)
}

/// Splits one DER element off `input`: its tag, its contents and what follows it.
pub(super) fn der_element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    if tag & 0x1f == 0x1f {
        return None; // multi-byte tags do not occur on this path
    }
    let (&first, rest) = rest.split_first()?;
    let (length, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let octets = usize::from(first & 0x7f);
        if octets == 0 || octets > 4 || rest.len() < octets {
            return None; // indefinite lengths are not DER; 4 GiB is plenty
        }
        let (bytes, rest) = rest.split_at(octets);
        (bytes.iter().fold(0usize, |length, &b| length << 8 | usize::from(b)), rest)
    };
    if rest.len() < length {
        return None;
    }
    let (contents, rest) = rest.split_at(length);
    Some((tag, contents, rest))
}

/// A UTCTime (`YYMMDDHHMMSSZ`, tag 0x17) or GeneralizedTime (`YYYYMMDDHHMMSSZ`, tag
/// 0x18), as RFC 5280 requires them, in Unix seconds.
pub(super) fn der_time(tag: u8, contents: &[u8]) -> Option<i64> {
    let digits = contents.strip_suffix(b"Z")?;
    if !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let number = |range: std::ops::Range<usize>| {
        digits.get(range).map(|d| d.iter().fold(0i32, |n, &b| n * 10 + i32::from(b - b'0')))
    };
    let (year, rest) = match (tag, digits.len()) {
        (0x17, 12) => {
            let yy = number(0..2)?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, 2)
        }
        (0x18, 14) => (number(0..4)?, 4),
        _ => return None,
    };
    let field = |i: usize| number(rest + 2 * i..rest + 2 * i + 2).and_then(|n| u8::try_from(n).ok());
    let month = time::Month::try_from(field(0)?).ok()?;
    let date = time::Date::from_calendar_date(year, month, field(1)?).ok()?;
    let time = time::Time::from_hms(field(2)?, field(3)?, field(4)?).ok()?;
    Some(time::PrimitiveDateTime::new(date, time).assume_utc().unix_timestamp())
}
