import FoundationEssentials

/// The handshake's JSON (an array of ``GuestRegion``), in one place.
package enum RegionsJSON {
  package static func decode(_ bytes: [UInt8]) throws -> [GuestRegion] {
    try JSONDecoder().decode([GuestRegion].self, from: Data(bytes))
  }

  package static func encode(_ regions: [GuestRegion]) throws -> [UInt8] {
    Array(try JSONEncoder().encode(regions))
  }
}
