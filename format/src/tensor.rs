//! Tensor facts and endpoints as the files record them, typed: a dtype by its IR
//! name (`f32`, `i64`), a shape as a list of dimensions (a size, a symbolic expression
//! of the graph's size symbols such as `"past+seq"`, or `null` when unknown), and who
//! sends or receives a tensor ([`Endpoint`]).

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
pub use shardc_ir::{DType, Dim};

/// Who is at one end of a transfer: the client, or a device by name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Endpoint {
    Client,
    Device(String),
}

impl Endpoint {
    /// The endpoint a name stands for: `client`, or a device (a plain device name).
    pub fn parse(name: &str) -> Result<Endpoint, String> {
        if name == "client" {
            return Ok(Endpoint::Client);
        }
        crate::names::check_name(name)?;
        Ok(Endpoint::Device(name.to_string()))
    }

    /// `client`, or the device's name.
    pub fn name(&self) -> &str {
        match self {
            Endpoint::Client => "client",
            Endpoint::Device(d) => d,
        }
    }

    /// The device, when it is one.
    pub fn device(&self) -> Option<&str> {
        match self {
            Endpoint::Client => None,
            Endpoint::Device(d) => Some(d),
        }
    }

    /// Whether this is the device `name`.
    pub fn is_device(&self, name: &str) -> bool {
        self.device() == Some(name)
    }
}

/// `endpoint == "client"`, `endpoint == "dev-a"`: by the name files spell.
impl PartialEq<&str> for Endpoint {
    fn eq(&self, name: &&str) -> bool {
        self.name() == *name
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl Serialize for Endpoint {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for Endpoint {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Endpoint, D::Error> {
        let name = String::deserialize(d)?;
        Endpoint::parse(&name).map_err(|e| D::Error::custom(format!("endpoint `{name}`: {e}")))
    }
}

/// `Option<DType>` as the dtype's name, or `null` when unknown.
pub mod opt_dtype {
    use super::*;

    pub fn serialize<S: Serializer>(d: &Option<DType>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(d.name()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DType>, D::Error> {
        Option::<String>::deserialize(d)?.map(|n| n.parse().map_err(D::Error::custom)).transpose()
    }
}

/// `Option<Vec<Dim>>`: a list of sizes (numbers), symbolic expressions (strings) and
/// unknown dimensions (`null`), or `null` when the rank is unknown too.
pub mod opt_shape {
    use super::*;

    #[derive(Serialize, Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Size(i64),
        Expr(String),
        Unknown,
    }

    pub fn serialize<S: Serializer>(shape: &Option<Vec<Dim>>, s: S) -> Result<S::Ok, S::Error> {
        let raw: Option<Vec<Raw>> = shape.as_ref().map(|dims| {
            dims.iter()
                .map(|d| match (d, d.as_known()) {
                    (Dim::Unknown, _) => Raw::Unknown,
                    (_, Some(n)) => Raw::Size(n),
                    _ => Raw::Expr(d.to_string()),
                })
                .collect()
        });
        raw.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<Dim>>, D::Error> {
        let raw = Option::<Vec<Raw>>::deserialize(d)?;
        raw.map(|dims| {
            dims.into_iter()
                .map(|r| match r {
                    Raw::Size(n) if n >= 0 => Ok(Dim::known(n)),
                    Raw::Size(n) => Err(D::Error::custom(format!("dimension {n} is negative"))),
                    Raw::Expr(e) => {
                        shardc_ir::dim::parse_dim(&e).map_err(|m| D::Error::custom(format!("dimension `{e}`: {m}")))
                    }
                    Raw::Unknown => Ok(Dim::Unknown),
                })
                .collect()
        })
        .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Fact {
        #[serde(with = "opt_dtype")]
        dtype: Option<DType>,
        #[serde(with = "opt_shape")]
        shape: Option<Vec<Dim>>,
        peers: Vec<Endpoint>,
    }

    #[test]
    fn facts_round_trip_as_numbers_expressions_and_names() {
        let shape = vec![Dim::sym("batch"), Dim::sym("past").add(&Dim::sym("seq")), Dim::known(768), Dim::Unknown];
        let fact = Fact {
            dtype: Some(DType::BF16),
            shape: Some(shape),
            peers: vec![Endpoint::Client, Endpoint::Device("dev-a".into())],
        };
        let text = serde_json::to_string(&fact).unwrap();
        assert_eq!(text, r#"{"dtype":"bf16","shape":["batch","past+seq",768,null],"peers":["client","dev-a"]}"#);
        assert_eq!(serde_json::from_str::<Fact>(&text).unwrap(), fact);
        let unknown = Fact { dtype: None, shape: None, peers: vec![] };
        assert_eq!(serde_json::from_str::<Fact>(&serde_json::to_string(&unknown).unwrap()).unwrap(), unknown);
    }

    #[test]
    fn bad_facts_are_refused_by_name() {
        let parse = |json: &str| serde_json::from_str::<Fact>(json).unwrap_err().to_string();
        assert!(parse(r#"{"dtype":"f33","shape":null,"peers":[]}"#).contains("f33"));
        assert!(parse(r#"{"dtype":null,"shape":[-1],"peers":[]}"#).contains("dimension -1 is negative"));
        assert!(parse(r#"{"dtype":null,"shape":["a+"],"peers":[]}"#).contains("dimension `a+`"));
        assert!(parse(r#"{"dtype":null,"shape":null,"peers":["../up"]}"#).contains("endpoint `../up`"));
    }
}
