//! How documents and geometries are laid out in redb.
//!
//! - `docs`: id → `<rev>\n<document JSON without _rev>`
//! - `geometry`: id → `0` + two little-endian f64 (lon, lat) for points, or `1` + the
//!   geometry field's JSON for other shapes. Read at open to rebuild the R-tree without
//!   parsing every document.
//! - `meta`: `geometry_path` the geometry table was extracted with.

use geo::{Geometry, Point};
use redb::TableDefinition;
use serde_json::Value;

use crate::doc::REV_FIELD;
use crate::error::{GeoError, GeoResult};
use crate::geometry::parse_geometry;

pub(crate) const DOCS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("docs");
pub(crate) const GEOMETRY: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("geometry");
pub(crate) const META: TableDefinition<'_, &str, &str> = TableDefinition::new("meta");
pub(crate) const META_GEOMETRY_PATH: &str = "geometry_path";

const POINT_TAG: u8 = 0;
const JSON_TAG: u8 = 1;

/// Writes the record of a document into `out` (cleared first, so one buffer serves a
/// whole batch).
pub(crate) fn encode_doc(out: &mut Vec<u8>, rev: &str, body: &[u8]) {
    out.clear();
    out.reserve(rev.len() + 1 + body.len());
    out.extend_from_slice(rev.as_bytes());
    out.push(b'\n');
    out.extend_from_slice(body);
}

/// The revision stored in front of a document.
pub(crate) fn stored_rev(bytes: &[u8]) -> Option<&str> {
    let end = bytes.iter().position(|byte| *byte == b'\n')?;
    std::str::from_utf8(bytes.get(..end)?).ok()
}

pub(crate) fn decode_doc(bytes: &[u8]) -> GeoResult<Value> {
    let corrupt = || GeoError::Storage {
        reason: "corrupt document record".to_owned(),
    };
    let rev = stored_rev(bytes).ok_or_else(corrupt)?;
    let body = bytes.get(rev.len() + 1..).ok_or_else(corrupt)?;
    let mut doc: Value = serde_json::from_slice(body).map_err(|_| corrupt())?;
    doc.as_object_mut()
        .ok_or_else(corrupt)?
        .insert(REV_FIELD.to_owned(), Value::String(rev.to_owned()));
    Ok(doc)
}

pub(crate) fn encode_geometry(geometry: &Geometry<f64>) -> Vec<u8> {
    match geometry {
        Geometry::Point(point) => {
            let mut bytes = Vec::with_capacity(17);
            bytes.push(POINT_TAG);
            bytes.extend_from_slice(&point.x().to_le_bytes());
            bytes.extend_from_slice(&point.y().to_le_bytes());
            bytes
        }
        other => {
            let mut bytes = vec![JSON_TAG];
            bytes.extend_from_slice(geojson(other).to_string().as_bytes());
            bytes
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
            assert_eq!(
                decode_geometry(&encode_geometry(&geometry)).unwrap(),
                geometry
            );
        }
        assert!(decode_geometry(&[7, 1]).is_err());
    }

    #[test]
    fn documents_round_trip_with_their_rev() {
        let mut bytes = b"left over".to_vec();
        encode_doc(&mut bytes, "3-abc", br#"{"_id":"x","a":1}"#);
        assert_eq!(stored_rev(&bytes), Some("3-abc"));
        assert_eq!(
            decode_doc(&bytes).unwrap(),
            json!({"_id": "x", "a": 1, "_rev": "3-abc"})
        );
        assert!(decode_doc(b"no newline").is_err());
    }
}
