import SystemPackage
import Testing
@testable import Userfaultfd

extension KernelTests {
@Suite("Opening and the feature handshake")
struct HandleTests {
  @Test func opensAndReportsFeatures() throws {
    let uffd = try Userfaultfd(features: [.threadID])
    #expect(uffd.features == [.threadID])
    #expect(uffd.supportedFeatures.contains(.threadID))
    #expect(uffd.ioctls.contains(.register))
    #expect(uffd.ioctls.contains(.unregister))
    #expect(uffd.ioctls.contains(.api))
    #expect(uffd.fileDescriptor.rawValue >= 0)
    #expect(uffd.openMethod != .forkEvent)
  }

  @Test func probeMatchesTheHandle() throws {
    let (features, method) = try Userfaultfd.probeSupportedFeatures()
    let uffd = try Userfaultfd()
    #expect(features == uffd.supportedFeatures)
    #expect(method == uffd.openMethod)
    #expect(uffd.features.isEmpty)
  }

  @Test func unsupportedFeatureIsNamedNotDropped() throws {
    let unknown = Features(rawValue: 1 << 40)
    let error = #expect(throws: UserfaultfdError.self) { _ = try Userfaultfd(features: [.sigbus, unknown]) }
    #expect(error == .featuresUnsupported(requested: [.sigbus, unknown], missing: unknown))
    #expect(unknown.names == ["bit40"], "an unknown bit is named, not dropped")
  }

  @Test func closesExactlyOnceAndRefusesUseAfterClose() throws {
    let uffd = try Userfaultfd()
    let memory = try AnonymousMemory(length: PageSize.base)
    uffd.close()
    uffd.close()
    #expect(uffd.isClosed)
    #expect(uffd.fileDescriptor.rawValue == -1)
    let error = #expect(throws: UserfaultfdError.self) {
      try uffd.register(memory.baseAddress, length: memory.length, mode: .missing)
    }
    #expect(error == .closed(.register))
  }

  @Test(.enabled(if: Kernel.hasUserModeOnly, "needs UFFD_USER_MODE_ONLY (Linux 5.11)"))
  func userModeOnlyOpens() throws {
    let uffd = try Userfaultfd(options: [.userModeOnly])
    #expect(uffd.openMethod == .syscallUserModeOnly || uffd.openMethod == .devUserfaultfd)
  }

  @Test func featureNamesRoundTrip() {
    for (feature, name) in Features.allNamed {
      #expect(Features(name: name) == feature)
      #expect(feature.names == [name])
    }
    #expect(Features(name: "no-such-feature") == nil)
    #expect(Features.move.rawValue == 1 << 16)
  }
}
}
