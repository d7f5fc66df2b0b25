//! Writing a [`Table`] as CSV (the `csv` crate) or Parquet (the `parquet` crate's column writers):
//! a column of numbers only is a nullable DOUBLE, of flags only a nullable BOOLEAN, anything
//! else nullable UTF-8 text; an empty cell is a null (an empty field in CSV).
use super::table::{Cell, Table};
use crate::util::error::{Error, Result};
use parquet::basic::{LogicalType, Repetition, Type as Physical};
use parquet::data_type::{BoolType, ByteArray, ByteArrayType, DoubleType};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::types::Type;
use std::path::Path;
use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Csv,
    Parquet,
}

impl Format {
    pub fn extension(self) -> &'static str {
        match self {
            Format::Csv => "csv",
            Format::Parquet => "parquet",
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Num,
    Bool,
    Text,
}

fn kind(t: &Table, col: &str) -> Kind {
    let cells = t.column(col);
    let present: Vec<&&Cell> = cells.iter().filter(|c| !matches!(c, Cell::Empty)).collect();
    if present.iter().all(|c| matches!(c, Cell::Num(_))) {
        Kind::Num
    } else if present.iter().all(|c| matches!(c, Cell::Bool(_))) {
        Kind::Bool
    } else {
        Kind::Text
    }
}

fn text(c: &Cell) -> Option<String> {
    match c {
        Cell::Num(x) => Some(format!("{x}")),
        Cell::Bool(b) => Some(b.to_string()),
        Cell::Text(s) => Some(s.clone()),
        Cell::Empty => None,
    }
}

fn csv_bytes(t: &Table) -> std::result::Result<Vec<u8>, csv::Error> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(&t.columns)?;
    for r in &t.rows {
        w.write_record(t.columns.iter().map(|c| r.get(c).and_then(text).unwrap_or_default()))?;
    }
    w.into_inner().map_err(|e| csv::Error::from(e.into_error()))
}

fn parquet_bytes(t: &Table) -> parquet::errors::Result<Vec<u8>> {
    let kinds: Vec<Kind> = t.columns.iter().map(|c| kind(t, c)).collect();
    let fields = t
        .columns
        .iter()
        .zip(&kinds)
        .map(|(name, k)| {
            let b = match k {
                Kind::Num => Type::primitive_type_builder(name, Physical::DOUBLE),
                Kind::Bool => Type::primitive_type_builder(name, Physical::BOOLEAN),
                Kind::Text => Type::primitive_type_builder(name, Physical::BYTE_ARRAY)
                    .with_logical_type(Some(LogicalType::String)),
            };
            b.with_repetition(Repetition::OPTIONAL).build().map(Arc::new)
        })
        .collect::<parquet::errors::Result<Vec<_>>>()?;
    let schema = Arc::new(Type::group_type_builder("schema").with_fields(fields).build()?);
    let mut buf = Vec::new();
    let mut w = SerializedFileWriter::new(&mut buf, schema, Arc::new(WriterProperties::builder().build()))?;
    let mut rg = w.next_row_group()?;
    let mut i = 0;
    while let Some(mut col) = rg.next_column()? {
        let cells = t.column(&t.columns[i]);
        let def: Vec<i16> = cells.iter().map(|c| i16::from(!matches!(c, Cell::Empty))).collect();
        match kinds[i] {
            Kind::Num => {
                let v: Vec<f64> =
                    cells.iter().filter_map(|c| if let Cell::Num(x) = c { Some(*x) } else { None }).collect();
                col.typed::<DoubleType>().write_batch(&v, Some(&def), None)?;
            }
            Kind::Bool => {
                let v: Vec<bool> =
                    cells.iter().filter_map(|c| if let Cell::Bool(x) = c { Some(*x) } else { None }).collect();
                col.typed::<BoolType>().write_batch(&v, Some(&def), None)?;
            }
            Kind::Text => {
                let v: Vec<ByteArray> =
                    cells.iter().filter_map(|c| text(c).map(|s| ByteArray::from(s.as_str()))).collect();
                col.typed::<ByteArrayType>().write_batch(&v, Some(&def), None)?;
            }
        }
        col.close()?;
        i += 1;
    }
    rg.close()?;
    w.close()?;
    Ok(buf)
}

/// Writes `t` to `path` atomically.
pub fn write(t: &Table, format: Format, path: &Path) -> Result<()> {
    let bytes = match format {
        Format::Csv => csv_bytes(t).map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?,
        Format::Parquet => parquet_bytes(t).map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?,
    };
    crate::util::io::atomic_write(path, &bytes)
}
