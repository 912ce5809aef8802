//! The macros that define the op set ([`crate::ops`]): `define_ops!` turns the list
//! of ops, their arities and typed attributes into the `Op` enum, one struct per op,
//! and the name and attribute conversions.

macro_rules! attr_default {
    ($op:expr, $attr:expr) => {
        return Err(OpError::MissingAttr { op: $op, attr: $attr })
    };
    ($op:expr, $attr:expr, $default:expr) => {
        $default
    };
}

macro_rules! attr_is_default {
    ($value:expr) => {
        false
    };
    ($value:expr, $default:expr) => {
        *$value == $default
    };
}

macro_rules! define_ops {
    ($(
        $(#[doc = $doc:literal])*
        $name:ident ($min_in:literal ..= $max_in:literal -> $min_out:literal ..= $max_out:literal) {
            $( $field:ident : $fty:ty $(= $default:expr)? ),* $(,)?
        }
    )*) => {
        $(
            $(#[doc = $doc])*
            #[derive(Clone, Debug, PartialEq)]
            #[allow(non_snake_case)]
            pub struct $name { $( pub $field: $fty, )* }
        )*

        /// Every op shardc knows.
        #[derive(Clone, Debug, PartialEq)]
        pub enum Op { $( $name($name), )* }

        impl Op {
            /// Every op name, in declaration order.
            pub const NAMES: &'static [&'static str] = &[ $( stringify!($name), )* ];

            /// The op's name (ONNX `op_type`).
            pub fn name(&self) -> &'static str {
                match self { $( Op::$name(_) => stringify!($name), )* }
            }

            /// Input and output counts the op accepts.
            pub fn arity(&self) -> Arity {
                match self {
                    $( Op::$name(_) => Arity {
                        min_inputs: $min_in, max_inputs: $max_in,
                        min_outputs: $min_out, max_outputs: $max_out,
                    }, )*
                }
            }

            /// Attributes that differ from their defaults, in declaration order.
            #[allow(unused_variables, unused_mut)]
            pub fn attributes(&self) -> Vec<(&'static str, AttrValue)> {
                let mut out = Vec::new();
                match self {
                    $( Op::$name(op) => {
                        $(
                            if !attr_is_default!(&op.$field $(, $default)?) {
                                if let Some(v) = AttrType::to_attr(&op.$field) {
                                    out.push((stringify!($field), v));
                                }
                            }
                        )*
                    } )*
                }
                out
            }

            /// Build an op from its name and attributes; every attribute must be known.
            #[allow(unused_mut, non_snake_case)]
            pub fn from_attrs(name: &str, mut attrs: Attrs) -> Result<Op, OpError> {
                match name {
                    $( stringify!($name) => {
                        const OP: &str = stringify!($name);
                        $(
                            let $field: $fty = match attrs.remove(stringify!($field)) {
                                Some(value) => {
                                    let got = value.kind();
                                    <$fty as AttrType>::from_attr(value).ok_or(OpError::BadAttr {
                                        op: OP,
                                        attr: stringify!($field),
                                        expected: <$fty as AttrType>::EXPECTED,
                                        got,
                                    })?
                                }
                                None => { attr_default!(OP, stringify!($field) $(, $default)?) }
                            };
                        )*
                        if let Some(attr) = attrs.keys().next() {
                            let known: &[&str] = &[ $( stringify!($field), )* ];
                            return Err(OpError::UnknownAttr {
                                op: OP,
                                attr: attr.clone(),
                                known: if known.is_empty() { "none".into() } else { known.join(", ") },
                            });
                        }
                        Ok(Op::$name($name { $( $field, )* }))
                    } )*
                    other => Err(OpError::UnknownOp(other.to_string())),
                }
            }
        }
    };
}
