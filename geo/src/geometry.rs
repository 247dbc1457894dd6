//! Turning a document's location field into a validated [`geo::Geometry`].
//!
//! Two shapes are accepted at the configured path:
//! - `{"latitude": 41.87, "longitude": -87.62, ...}` (the device-location shape; other
//!   keys such as `velocity` are ignored), and
//! - any GeoJSON geometry: `Point`, `LineString`, `Polygon`, `MultiPoint`,
//!   `MultiLineString`, `MultiPolygon` and `GeometryCollection`.
//!
//! Coordinates must be JSON numbers (strings are rejected), latitudes in [-90, 90] and
//! longitudes in [-180, 180]. Polygon rings must be closed and hold at least 4 positions.

use geo::{
    BoundingRect, Coord, Geometry, GeometryCollection, LineString, MultiLineString, MultiPoint,
    MultiPolygon, Point, Polygon, Rect,
};
use serde_json::Value;

use crate::doc::{self, get_path};
use crate::error::{GeoError, GeoResult};

/// Deepest nesting of `GeometryCollection`s accepted, so hostile input cannot recurse far.
const MAX_COLLECTION_DEPTH: usize = 4;

/// Reads and validates the geometry at the dotted `path` of `doc`.
pub fn extract_geometry(doc: &Value, path: &str) -> GeoResult<Geometry<f64>> {
    match get_path(doc, path) {
        None | Some(Value::Null) => Err(GeoError::geometry(path, "missing")),
        Some(value) => parse_geometry(value, path),
    }
}

/// Parses a geometry value (lat/lon object or GeoJSON); `field` names it in errors.
pub fn parse_geometry(value: &Value, field: &str) -> GeoResult<Geometry<f64>> {
    let Some(object) = value.as_object() else {
        return Err(GeoError::geometry(
            field,
            "expected an object with latitude/longitude or a GeoJSON geometry",
        ));
    };
    // Lat/lon first: device payloads carry their own `type` (e.g. `"GPS"`).
    // Field names are only formatted on error: this runs for every stored document.
    let latitude = doc::field(object, "latitude");
    let longitude = doc::field(object, "longitude");
    if latitude.is_some() || longitude.is_some() {
        let latitude_field = || format!("{field}.latitude");
        let longitude_field = || format!("{field}.longitude");
        let latitude = number_at(latitude, latitude_field)?;
        let longitude = number_at(longitude, longitude_field)?;
        let coord = coord_at(longitude, latitude, longitude_field, latitude_field)?;
        return Ok(Geometry::Point(Point(coord)));
    }
    if object.contains_key("type") {
        return parse_geojson(value, field, 0);
    }
    Err(GeoError::geometry(
        field,
        "expected `latitude`/`longitude` or a GeoJSON `type`",
    ))
}

/// The bounding box of a geometry, if it has one (an empty collection does not).
pub fn envelope(geometry: &Geometry<f64>) -> Option<Rect<f64>> {
    geometry.bounding_rect()
}

/// A finite JSON number; the field name is built only on error.
fn number_at(value: Option<&Value>, field: impl Fn() -> String) -> GeoResult<f64> {
    match value {
        None | Some(Value::Null) => Err(GeoError::geometry(field(), "missing")),
        Some(Value::Number(number)) => number
            .as_f64()
            .filter(|float| float.is_finite())
            .ok_or_else(|| GeoError::geometry(field(), "not a finite number")),
        Some(other) => Err(GeoError::geometry(
            field(),
            format!("expected a number, found {}", json_kind(other)),
        )),
    }
}

pub(crate) fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Validates a longitude/latitude pair; the field names are used in errors.
pub(crate) fn checked_coord(
    longitude: f64,
    latitude: f64,
    longitude_field: &str,
    latitude_field: &str,
) -> GeoResult<Coord<f64>> {
    coord_at(
        longitude,
        latitude,
        || longitude_field.to_owned(),
        || latitude_field.to_owned(),
    )
}

/// [`checked_coord`] with the field names built only on error.
fn coord_at(
    longitude: f64,
    latitude: f64,
    longitude_field: impl Fn() -> String,
    latitude_field: impl Fn() -> String,
) -> GeoResult<Coord<f64>> {
    if !latitude.is_finite() || !(-90.0..=90.0).contains(&latitude) {
        return Err(GeoError::geometry(
            latitude_field(),
            format!("latitude {latitude} is outside [-90, 90]"),
        ));
    }
    if !longitude.is_finite() || !(-180.0..=180.0).contains(&longitude) {
        return Err(GeoError::geometry(
            longitude_field(),
            format!("longitude {longitude} is outside [-180, 180]"),
        ));
    }
    Ok(Coord {
        x: longitude,
        y: latitude,
    })
}

fn parse_geojson(value: &Value, field: &str, depth: usize) -> GeoResult<Geometry<f64>> {
    let kind = match value.get("type") {
        Some(Value::String(kind)) => kind.as_str(),
        Some(other) => {
            return Err(GeoError::geometry(
                format!("{field}.type"),
                format!("expected a string, found {}", json_kind(other)),
            ));
        }
        None => return Err(GeoError::geometry(format!("{field}.type"), "missing")),
    };
    if kind == "GeometryCollection" {
        if depth >= MAX_COLLECTION_DEPTH {
            return Err(GeoError::geometry(
                field,
                "GeometryCollection nested too deeply",
            ));
        }
        let geometries_field = format!("{field}.geometries");
        let Some(Value::Array(members)) = value.get("geometries") else {
            return Err(GeoError::geometry(geometries_field, "expected an array"));
        };
        let parsed = members
            .iter()
            .enumerate()
            .map(|(index, member)| {
                parse_geojson(member, &format!("{geometries_field}[{index}]"), depth + 1)
            })
            .collect::<GeoResult<Vec<_>>>()?;
        return Ok(Geometry::GeometryCollection(GeometryCollection(parsed)));
    }
    let coordinates_field = format!("{field}.coordinates");
    let Some(coordinates) = value.get("coordinates") else {
        return Err(GeoError::geometry(coordinates_field, "missing"));
    };
    let geometry = match kind {
        "Point" => Geometry::Point(Point(position(coordinates, &coordinates_field)?)),
        "MultiPoint" => Geometry::MultiPoint(MultiPoint(
            positions(coordinates, &coordinates_field)?
                .into_iter()
                .map(Point)
                .collect(),
        )),
        "LineString" => Geometry::LineString(line_string(coordinates, &coordinates_field)?),
        "MultiLineString" => Geometry::MultiLineString(MultiLineString(
            array(coordinates, &coordinates_field)?
                .iter()
                .enumerate()
                .map(|(index, line)| line_string(line, &format!("{coordinates_field}[{index}]")))
                .collect::<GeoResult<_>>()?,
        )),
        "Polygon" => Geometry::Polygon(polygon(coordinates, &coordinates_field)?),
        "MultiPolygon" => Geometry::MultiPolygon(MultiPolygon(
            array(coordinates, &coordinates_field)?
                .iter()
                .enumerate()
                .map(|(index, rings)| polygon(rings, &format!("{coordinates_field}[{index}]")))
                .collect::<GeoResult<_>>()?,
        )),
        other => {
            return Err(GeoError::geometry(
                format!("{field}.type"),
                format!("unsupported GeoJSON type `{other}`"),
            ));
        }
    };
    Ok(geometry)
}

fn array<'a>(value: &'a Value, field: &str) -> GeoResult<&'a Vec<Value>> {
    value.as_array().ok_or_else(|| {
        GeoError::geometry(
            field,
            format!("expected an array, found {}", json_kind(value)),
        )
    })
}

/// A GeoJSON position: `[longitude, latitude]`, an optional altitude is ignored.
fn position(value: &Value, field: &str) -> GeoResult<Coord<f64>> {
    let items = array(value, field)?;
    if items.len() < 2 || items.len() > 3 {
        return Err(GeoError::geometry(
            field,
            format!("a position needs 2 or 3 numbers, found {}", items.len()),
        ));
    }
    let longitude_field = || format!("{field}[0]");
    let latitude_field = || format!("{field}[1]");
    let longitude = number_at(items.first(), longitude_field)?;
    let latitude = number_at(items.get(1), latitude_field)?;
    if let Some(altitude) = items.get(2) {
        number_at(Some(altitude), || format!("{field}[2]"))?;
    }
    coord_at(longitude, latitude, longitude_field, latitude_field)
}

fn positions(value: &Value, field: &str) -> GeoResult<Vec<Coord<f64>>> {
    array(value, field)?
        .iter()
        .enumerate()
        .map(|(index, item)| position(item, &format!("{field}[{index}]")))
        .collect()
}

fn line_string(value: &Value, field: &str) -> GeoResult<LineString<f64>> {
    let coords = positions(value, field)?;
    if coords.len() < 2 {
        return Err(GeoError::geometry(
            field,
            "a LineString needs at least 2 positions",
        ));
    }
    Ok(LineString(coords))
}

fn ring(value: &Value, field: &str) -> GeoResult<LineString<f64>> {
    let coords = positions(value, field)?;
    if coords.len() < 4 {
        return Err(GeoError::geometry(
            field,
            format!(
                "a polygon ring needs at least 4 positions, found {}",
                coords.len()
            ),
        ));
    }
    if coords.first() != coords.last() {
        return Err(GeoError::geometry(
            field,
            "a polygon ring must be closed (first position equal to the last)",
        ));
    }
    Ok(LineString(coords))
}

fn polygon(value: &Value, field: &str) -> GeoResult<Polygon<f64>> {
    let rings = array(value, field)?;
    let Some((exterior, interiors)) = rings.split_first() else {
        return Err(GeoError::geometry(
            field,
            "a Polygon needs an exterior ring",
        ));
    };
    let exterior = ring(exterior, &format!("{field}[0]"))?;
    let interiors = interiors
        .iter()
        .enumerate()
        .map(|(index, interior)| ring(interior, &format!("{field}[{}]", index + 1)))
        .collect::<GeoResult<Vec<_>>>()?;
    Ok(Polygon::new(exterior, interiors))
}

/// Validates a geometry built elsewhere (a WKT query shape): coordinate ranges and
/// closed polygon rings with at least 4 positions. `field` names it in errors.
pub(crate) fn validate(geometry: &Geometry<f64>, field: &str) -> GeoResult<()> {
    let check_coords = |coords: &mut dyn Iterator<Item = &Coord<f64>>| -> GeoResult<()> {
        for coord in coords {
            checked_coord(coord.x, coord.y, field, field)?;
        }
        Ok(())
    };
    let check_polygon = |polygon: &Polygon<f64>| -> GeoResult<()> {
        for ring in std::iter::once(polygon.exterior()).chain(polygon.interiors()) {
            // geo closes rings itself, so a 3-point open ring arrives here as 4 points;
            // the original WKT text is checked for closure by the parser.
            if ring.0.len() < 4 {
                return Err(GeoError::geometry(
                    field,
                    "a polygon ring needs at least 4 positions",
                ));
            }
            check_coords(&mut ring.0.iter())?;
        }
        Ok(())
    };
    match geometry {
        Geometry::Point(point) => check_coords(&mut std::iter::once(&point.0)),
        Geometry::MultiPoint(points) => check_coords(&mut points.0.iter().map(|point| &point.0)),
        Geometry::Line(line) => check_coords(&mut [line.start, line.end].iter()),
        Geometry::LineString(line) => {
            if line.0.len() < 2 {
                return Err(GeoError::geometry(
                    field,
                    "a LineString needs at least 2 positions",
                ));
            }
            check_coords(&mut line.0.iter())
        }
        Geometry::MultiLineString(lines) => {
            for line in lines {
                if line.0.len() < 2 {
                    return Err(GeoError::geometry(
                        field,
                        "a LineString needs at least 2 positions",
                    ));
                }
                check_coords(&mut line.0.iter())?;
            }
            Ok(())
        }
        Geometry::Polygon(polygon) => check_polygon(polygon),
        Geometry::MultiPolygon(polygons) => polygons.iter().try_for_each(check_polygon),
        Geometry::Rect(rect) => check_coords(&mut [rect.min(), rect.max()].iter()),
        Geometry::Triangle(triangle) => check_coords(&mut triangle.to_array().iter()),
        Geometry::GeometryCollection(collection) => collection
            .iter()
            .try_for_each(|member| validate(member, field)),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use serde_json::json;

    fn field_of(error: GeoError) -> String {
        match error {
            GeoError::InvalidGeometry { field, .. } => field,
            other => panic!("unexpected error {other:?}"),
        }
    }

    #[test]
    fn device_location_shape_becomes_a_point() {
        let doc = json!({"d": {"location": {"longitude": -87.62, "latitude": 41.87, "velocity": 4, "type": "GPS"}}});
        // `type: GPS` is not a GeoJSON type; a lat/lon object with a foreign `type` must still work.
        let geometry = extract_geometry(&doc, "d.location").unwrap();
        assert_eq!(geometry, Geometry::Point(Point::new(-87.62, 41.87)));
    }

    #[test]
    fn geojson_types_parse() {
        let cases = [
            json!({"type": "Point", "coordinates": [1.0, 2.0]}),
            json!({"type": "Point", "coordinates": [1.0, 2.0, 300.0]}),
            json!({"type": "MultiPoint", "coordinates": [[1.0, 2.0], [3, 4]]}),
            json!({"type": "LineString", "coordinates": [[1.0, 2.0], [3, 4]]}),
            json!({"type": "MultiLineString", "coordinates": [[[1.0, 2.0], [3, 4]]]}),
            json!({"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 0]]]}),
            json!({"type": "MultiPolygon", "coordinates": [[[[0, 0], [1, 0], [1, 1], [0, 0]]]]}),
            json!({"type": "GeometryCollection", "geometries": [{"type": "Point", "coordinates": [1, 2]}]}),
        ];
        for case in cases {
            parse_geometry(&case, "geometry").unwrap();
        }
    }

    #[test]
    fn errors_name_the_field() {
        let bad_lat = json!({"loc": {"latitude": 91, "longitude": 0}});
        assert_eq!(
            field_of(extract_geometry(&bad_lat, "loc").unwrap_err()),
            "loc.latitude"
        );
        let bad_lon = json!({"loc": {"latitude": 0, "longitude": -180.5}});
        assert_eq!(
            field_of(extract_geometry(&bad_lon, "loc").unwrap_err()),
            "loc.longitude"
        );
        let string_lat = json!({"loc": {"latitude": "41", "longitude": 0}});
        assert_eq!(
            field_of(extract_geometry(&string_lat, "loc").unwrap_err()),
            "loc.latitude"
        );
        let missing = json!({"other": 1});
        assert_eq!(
            field_of(extract_geometry(&missing, "loc").unwrap_err()),
            "loc"
        );
        let open_ring =
            json!({"g": {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 1]]]}});
        assert_eq!(
            field_of(extract_geometry(&open_ring, "g").unwrap_err()),
            "g.coordinates[0]"
        );
        let short_ring =
            json!({"g": {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [0, 0]]]}});
        assert_eq!(
            field_of(extract_geometry(&short_ring, "g").unwrap_err()),
            "g.coordinates[0]"
        );
        let bad_point = json!({"g": {"type": "Point", "coordinates": [0, 95]}});
        assert_eq!(
            field_of(extract_geometry(&bad_point, "g").unwrap_err()),
            "g.coordinates[1]"
        );
        let unknown = json!({"g": {"type": "Circle", "coordinates": [0, 0]}});
        assert_eq!(
            field_of(extract_geometry(&unknown, "g").unwrap_err()),
            "g.type"
        );
    }

    #[test]
    fn envelope_covers_the_geometry() {
        let polygon = json!({"type": "Polygon", "coordinates": [[[0, 0], [2, 0], [2, 3], [0, 0]]]});
        let rect = envelope(&parse_geometry(&polygon, "g").unwrap()).unwrap();
        assert_eq!(
            (rect.min().x, rect.min().y, rect.max().x, rect.max().y),
            (0.0, 0.0, 2.0, 3.0)
        );
    }
}
