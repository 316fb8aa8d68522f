//! f64 fields of charlab's JSON files (a run's `run.json`, a checkpoint's cursor) that keep NaN
//! and ±∞. serde_json writes a non-finite f64 as `null` and then refuses `null` as an f64, so a
//! diverged run's record could not be read back and its results vanished from compare, report
//! and the search. Here a non-finite value is written as the string `"NaN"`, `"Infinity"` or
//! `"-Infinity"` (Python's and JavaScript's names); a `null` left by an older charlab reads as
//! NaN (that is what it stood for). Use as `#[serde(with = "crate::json_float")]`, or
//! `crate::json_float::option` for an `Option<f64>` (`None` stays `null`).

use serde::{Deserialize, Deserializer, Serializer};

/// The JSON form of an f64: a number, or one of the names of the non-finite values.
#[derive(Deserialize)]
#[serde(untagged)]
enum Repr {
    Number(f64),
    Name(String),
}

fn name(v: f64) -> Option<&'static str> {
    if v.is_nan() {
        Some("NaN")
    } else if v == f64::INFINITY {
        Some("Infinity")
    } else if v == f64::NEG_INFINITY {
        Some("-Infinity")
    } else {
        None
    }
}

fn from_repr<E: serde::de::Error>(r: Repr) -> Result<f64, E> {
    match r {
        Repr::Number(v) => Ok(v),
        Repr::Name(s) => match s.as_str() {
            "NaN" | "nan" => Ok(f64::NAN),
            "Infinity" | "inf" => Ok(f64::INFINITY),
            "-Infinity" | "-inf" => Ok(f64::NEG_INFINITY),
            _ => Err(E::custom(format!(
                "expected a number, \"NaN\", \"Infinity\" or \"-Infinity\", found \"{s}\""
            ))),
        },
    }
}

pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
    match name(*v) {
        Some(n) => s.serialize_str(n),
        None => s.serialize_f64(*v),
    }
}

pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Option::<Repr>::deserialize(d)?.map_or(Ok(f64::NAN), from_repr)
}

/// The same for `Option<f64>`.
pub mod option {
    use super::*;

    pub fn serialize<S: Serializer>(v: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => super::serialize(v, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
        Option::<Repr>::deserialize(d)?.map(from_repr).transpose()
    }
}
