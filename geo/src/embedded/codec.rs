//! How documents are laid out in redb.
//!
//! - `documents`: id → one record per document, everything a write or the index
//!   rebuild needs, so a store is one insert:
//!
//!   ```text
//!   [rev length: u8][rev][geometry length: u32 LE][geometry][document JSON without _rev]
//!   ```
//!
//!   The geometry is `0` + two little-endian f64 (lon, lat) for points, or `1` + the
//!   geometry field's JSON for other shapes; empty when the document has no geometry at
//!   the configured path (it is then left out of the index). The index is rebuilt at
//!   open from these bytes without parsing any document JSON.
//! - `meta`: `geometry_path` the records' geometries were extracted with.
//!
//! Stores written before 2026-12-01 used two tables, `docs` (id → `<rev>\n<JSON>`) and
//! `geometry` (id → geometry); [`super::open_blocking`] converts them once at open.

use geo::{Geometry, Point};
use redb::TableDefinition;
use serde_json::Value;

use crate::doc::REV_FIELD;
use crate::error::{GeoError, GeoResult};
use crate::geometry::parse_geometry;

pub(crate) const DOCS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("documents");
pub(crate) const META: TableDefinition<'_, &str, &str> = TableDefinition::new("meta");
pub(crate) const META_GEOMETRY_PATH: &str = "geometry_path";
/// The two-table layout of stores written before 2026-12-01.
pub(crate) const LEGACY_DOCS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("docs");
pub(crate) const LEGACY_GEOMETRY: TableDefinition<'_, &str, &[u8]> =
    TableDefinition::new("geometry");

const POINT_TAG: u8 = 0;
const JSON_TAG: u8 = 1;

fn corrupt() -> GeoError {
    GeoError::Storage {
        reason: "corrupt document record".to_owned(),
    }
}

/// A record without its revision: what a caller prepares before the writer, which alone
/// knows the previous revision, completes it.
#[derive(Debug)]
pub(crate) struct Tail {
    bytes: Vec<u8>,
    /// Where the document JSON starts in `bytes`.
    body_start: usize,
}

impl Tail {
    /// Encodes `geometry` (none: the document is not indexed) and the document.
    pub(crate) fn new(geometry: Option<&Geometry<f64>>, doc: &Value) -> GeoResult<Self> {
        let mut bytes = Vec::with_capacity(256);
        bytes.extend_from_slice(&[0; 4]);
        if let Some(geometry) = geometry {
            encode_geometry(&mut bytes, geometry);
        }
        let geometry_len = u32::try_from(bytes.len() - 4)
            .map_err(|_| GeoError::document("the geometry is too large"))?;
        bytes[..4].copy_from_slice(&geometry_len.to_le_bytes());
        let body_start = bytes.len();
        serde_json::to_writer(&mut bytes, doc)
            .map_err(|error| GeoError::document(error.to_string()))?;
        Ok(Self { bytes, body_start })
    }

    /// Keeps an encoded geometry and document JSON as they are (conversions at open).
    pub(crate) fn from_parts(geometry: &[u8], body: &[u8]) -> GeoResult<Self> {
        let geometry_len = u32::try_from(geometry.len()).map_err(|_| corrupt())?;
        let mut bytes = Vec::with_capacity(4 + geometry.len() + body.len());
        bytes.extend_from_slice(&geometry_len.to_le_bytes());
        bytes.extend_from_slice(geometry);
        bytes.extend_from_slice(body);
        Ok(Self {
            bytes,
            body_start: 4 + geometry.len(),
        })
    }

    /// The document JSON, which the revision hashes.
    pub(crate) fn body(&self) -> &[u8] {
        &self.bytes[self.body_start..]
    }

    /// Length of the whole record with `rev` in front.
    pub(crate) fn record_len(&self, rev: &str) -> usize {
        1 + rev.len() + self.bytes.len()
    }

    /// Writes the record into `out`, which is [`Tail::record_len`] long.
    pub(crate) fn write_record(&self, rev: &str, out: &mut [u8]) -> GeoResult<()> {
        let rev_len = u8::try_from(rev.len()).map_err(|_| corrupt())?;
        let (head, rest) = out.split_first_mut().ok_or_else(corrupt)?;
        *head = rev_len;
        let (rev_out, tail_out) = rest.split_at_mut(rev.len());
        rev_out.copy_from_slice(rev.as_bytes());
        tail_out.copy_from_slice(&self.bytes);
        Ok(())
    }

    /// The whole record in a new buffer.
    pub(crate) fn to_record(&self, rev: &str) -> GeoResult<Vec<u8>> {
        let mut out = vec![0; self.record_len(rev)];
        self.write_record(rev, &mut out)?;
        Ok(out)
    }
}

/// The parts of a stored record.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Record<'a> {
    pub(crate) rev: &'a str,
    /// Empty when the document has no geometry.
    pub(crate) geometry: &'a [u8],
    pub(crate) body: &'a [u8],
}

impl<'a> Record<'a> {
    pub(crate) fn parse(bytes: &'a [u8]) -> GeoResult<Self> {
        let (&rev_len, rest) = bytes.split_first().ok_or_else(corrupt)?;
        let rev_len = usize::from(rev_len);
        let rev = rest.get(..rev_len).ok_or_else(corrupt)?;
        let rev = std::str::from_utf8(rev).map_err(|_| corrupt())?;
        let rest = rest.get(rev_len..).ok_or_else(corrupt)?;
        let (len, rest) = rest.split_at_checked(4).ok_or_else(corrupt)?;
        let len = u32::from_le_bytes(len.try_into().map_err(|_| corrupt())?);
        let len = usize::try_from(len).map_err(|_| corrupt())?;
        let (geometry, body) = rest.split_at_checked(len).ok_or_else(corrupt)?;
        Ok(Self {
            rev,
            geometry,
            body,
        })
    }

    /// The document with its `_rev`.
    pub(crate) fn doc(&self) -> GeoResult<Value> {
        let mut doc: Value = serde_json::from_slice(self.body).map_err(|_| corrupt())?;
        doc.as_object_mut()
            .ok_or_else(corrupt)?
            .insert(REV_FIELD.to_owned(), Value::String(self.rev.to_owned()));
        Ok(doc)
    }

    /// The geometry, `None` when the document has none.
    pub(crate) fn geometry(&self) -> GeoResult<Option<Geometry<f64>>> {
        if self.geometry.is_empty() {
            return Ok(None);
        }
        decode_geometry(self.geometry).map(Some)
    }
}

/// A record of the legacy `docs` table: `(rev, document JSON)`.
pub(crate) fn parse_legacy_doc(bytes: &[u8]) -> GeoResult<(&str, &[u8])> {
    let end = bytes
        .iter()
        .position(|byte| *byte == b'\n')
        .ok_or_else(corrupt)?;
    let rev = std::str::from_utf8(&bytes[..end]).map_err(|_| corrupt())?;
    Ok((rev, &bytes[end + 1..]))
}

pub(crate) fn encode_geometry(out: &mut Vec<u8>, geometry: &Geometry<f64>) {
    match geometry {
        Geometry::Point(point) => {
            out.push(POINT_TAG);
            out.extend_from_slice(&point.x().to_le_bytes());
            out.extend_from_slice(&point.y().to_le_bytes());
        }
        other => {
            out.push(JSON_TAG);
            // Writing a `Value` into a Vec cannot fail.
            let _ = serde_json::to_writer(&mut *out, &geojson(other));
        }
    }
}

pub(crate) fn decode_geometry(bytes: &[u8]) -> GeoResult<Geometry<f64>> {
    let corrupt = || GeoError::Storage {
        reason: "corrupt geometry record".to_owned(),
    };
    match bytes.split_first() {
        Some((&POINT_TAG, rest)) if rest.len() == 16 => {
            let (x, y) = rest.split_at(8);
            let x = f64::from_le_bytes(x.try_into().map_err(|_| corrupt())?);
            let y = f64::from_le_bytes(y.try_into().map_err(|_| corrupt())?);
            Ok(Geometry::Point(Point::new(x, y)))
        }
        Some((&JSON_TAG, rest)) => {
            let value: Value = serde_json::from_slice(rest).map_err(|_| corrupt())?;
            parse_geometry(&value, "geometry")
        }
        _ => Err(corrupt()),
    }
}

/// GeoJSON for the shapes documents can hold.
fn geojson(geometry: &Geometry<f64>) -> Value {
    use serde_json::json;
    let position = |coord: &geo::Coord<f64>| json!([coord.x, coord.y]);
    let line = |line: &geo::LineString<f64>| Value::Array(line.0.iter().map(position).collect());
    let polygon = |polygon: &geo::Polygon<f64>| {
        Value::Array(
            std::iter::once(polygon.exterior())
                .chain(polygon.interiors())
                .map(line)
                .collect(),
        )
    };
    match geometry {
        Geometry::Point(point) => json!({"type": "Point", "coordinates": position(&point.0)}),
        Geometry::MultiPoint(points) => json!({"type": "MultiPoint",
            "coordinates": points.0.iter().map(|point| position(&point.0)).collect::<Vec<_>>()}),
        Geometry::LineString(string) => json!({"type": "LineString", "coordinates": line(string)}),
        Geometry::MultiLineString(lines) => json!({"type": "MultiLineString",
            "coordinates": lines.0.iter().map(line).collect::<Vec<_>>()}),
        Geometry::Polygon(shape) => json!({"type": "Polygon", "coordinates": polygon(shape)}),
        Geometry::MultiPolygon(shapes) => json!({"type": "MultiPolygon",
            "coordinates": shapes.0.iter().map(polygon).collect::<Vec<_>>()}),
        Geometry::GeometryCollection(collection) => json!({"type": "GeometryCollection",
            "geometries": collection.0.iter().map(geojson).collect::<Vec<_>>()}),
        // Documents never hold these (GeoJSON has no such types); keep them as polygons.
        Geometry::Line(segment) => geojson(&Geometry::LineString((*segment).into())),
        Geometry::Rect(rect) => geojson(&Geometry::Polygon(rect.to_polygon())),
        Geometry::Triangle(triangle) => geojson(&Geometry::Polygon(triangle.to_polygon())),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use serde_json::json;

    fn round_trip(geometry: &Geometry<f64>) -> Geometry<f64> {
        let mut bytes = Vec::new();
        encode_geometry(&mut bytes, geometry);
        decode_geometry(&bytes).unwrap()
    }

    #[test]
    fn geometries_round_trip() {
        let shapes = [
            json!({"type": "Point", "coordinates": [1.5, -2.25]}),
            json!({"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 0]]]}),
            json!({"type": "GeometryCollection", "geometries": [
                {"type": "LineString", "coordinates": [[0, 0], [1, 1]]},
                {"type": "MultiPoint", "coordinates": [[0, 0]]}]}),
        ];
        for shape in shapes {
            let geometry = parse_geometry(&shape, "g").unwrap();
            assert_eq!(round_trip(&geometry), geometry);
        }
        assert!(decode_geometry(&[7, 1]).is_err());
    }

    #[test]
    fn records_hold_rev_geometry_and_document() {
        let point = Geometry::Point(Point::new(-87.6, 41.9));
        let doc = json!({"_id": "x", "a": 1});
        let tail = Tail::new(Some(&point), &doc).unwrap();
        assert_eq!(tail.body(), br#"{"_id":"x","a":1}"#);
        let bytes = tail.to_record("3-abc").unwrap();
        assert_eq!(bytes.len(), tail.record_len("3-abc"));
        let record = Record::parse(&bytes).unwrap();
        assert_eq!(record.rev, "3-abc");
        assert_eq!(record.geometry().unwrap(), Some(point));
        assert_eq!(
            record.doc().unwrap(),
            json!({"_id": "x", "a": 1, "_rev": "3-abc"})
        );

        let bare = Tail::new(None, &doc).unwrap().to_record("1-x").unwrap();
        assert_eq!(Record::parse(&bare).unwrap().geometry().unwrap(), None);
        let kept = Tail::from_parts(record.geometry, record.body).unwrap();
        assert_eq!(kept.to_record("3-abc").unwrap(), bytes);

        // Truncated records are refused, not misread.
        for end in 0..bytes.len() - tail.body().len() {
            assert!(Record::parse(&bytes[..end]).is_err(), "{end}");
        }
    }

    #[test]
    fn legacy_documents_split_at_the_first_newline() {
        let (rev, body) = parse_legacy_doc(b"2-ab\n{\"a\":\"x\\ny\"}").unwrap();
        assert_eq!(rev, "2-ab");
        assert_eq!(body, br#"{"a":"x\ny"}"#);
        assert!(parse_legacy_doc(b"no newline").is_err());
    }
}
