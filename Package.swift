// swift-tools-version:6.1
import PackageDescription

let package = Package(
  name: "swift-userfaultfd",
  // Linux (glibc) only: userfaultfd is a Linux interface, so no Apple platform is declared.
  products: [
    .library(name: "Userfaultfd", targets: ["Userfaultfd"]),
    .library(name: "CompactingHeap", targets: ["CompactingHeap"]),
    .library(name: "SnapshotPager", targets: ["SnapshotPager"]),
    .executable(name: "uffd", targets: ["uffd"]),
  ],
  dependencies: [
    .package(url: "https://github.com/apple/swift-system", from: "1.8.1"),
    .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
    .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift", from: "0.2.0"),
    .package(url: "https://github.com/x-sheep/swift-property-based", from: "2.0.1"),
    // The snapshot pager daemon only (never the core library): logs, metrics and their Prometheus
    // exposition over a small HTTP handler, start and graceful shutdown.
    .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
    .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
    .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
    .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
    .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
    // Remote snapshots (the pager only): HTTP range and S3 reads, SigV4 signing and chunk digests.
    .package(url: "https://github.com/swift-server/async-http-client", from: "1.37.0"),
    .package(url: "https://github.com/apple/swift-crypto", from: "4.5.2"),
    // `swift package generate-documentation` for the DocC catalogs (CI builds them, warnings as errors).
    .package(url: "https://github.com/swiftlang/swift-docc-plugin", from: "1.5.0"),
  ],
  targets: [
    // The kernel ABI (a private copy of the current uapi) and the calls Swift cannot make itself.
    .target(
      name: "CUserfaultfd",
      cSettings: [.define("_GNU_SOURCE")]
    ),
    .target(
      name: "Userfaultfd",
      dependencies: [
        "CUserfaultfd",
        .product(name: "SystemPackage", package: "swift-system"),
      ]
    ),
    // The snapshot pager: sessions serving other processes' memory from snapshot files, one event
    // loop per CPU over all of them, the shared snapshot mappings, the control protocol. Logs and
    // metrics through the swift-log / swift-metrics APIs only (the daemon picks the backends).
    .target(
      name: "SnapshotPager",
      dependencies: [
        "Userfaultfd",
        "CUserfaultfd",
        .product(name: "SystemPackage", package: "swift-system"),
        .product(name: "Histogram", package: "hdrhistogram-swift"),  // fault service latencies
        .product(name: "Logging", package: "swift-log"),
        .product(name: "Metrics", package: "swift-metrics"),
        .product(name: "AsyncHTTPClient", package: "async-http-client"),  // remote snapshot sources
        .product(name: "Crypto", package: "swift-crypto"),  // chunk digests, S3 SigV4
      ]
    ),
    // The pager as a host daemon: Prometheus exposition over HTTP (swift-nio), start and graceful
    // shutdown (swift-service-lifecycle). Only the `uffd` executable links it.
    .target(
      name: "SnapshotPagerDaemon",
      dependencies: [
        "SnapshotPager",
        "Userfaultfd",
        .product(name: "Logging", package: "swift-log"),
        .product(name: "Metrics", package: "swift-metrics"),
        .product(name: "Prometheus", package: "swift-prometheus"),
        .product(name: "NIOCore", package: "swift-nio"),
        .product(name: "NIOPosix", package: "swift-nio"),
        .product(name: "NIOHTTP1", package: "swift-nio"),
        .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
      ]
    ),
    // A concurrent compacting heap: the seed thread's use case.
    .target(
      name: "CompactingHeap",
      dependencies: ["Userfaultfd"]
    ),
    // C reference loops the benchmarks run beside the Swift library, for Swift/C ratios.
    .target(
      name: "CUserfaultfdReference",
      dependencies: ["CUserfaultfd"],
      cSettings: [.define("_GNU_SOURCE")]
    ),
    // What the `uffd` tool does (benchmarks, the stress test, the compaction job and its report), as
    // a library: the executable only parses and calls, and tests use this without the executable.
    .target(
      name: "UffdTools",
      dependencies: [
        "Userfaultfd",
        "SnapshotPager",
        "CompactingHeap",
        "CUserfaultfdReference",
        .product(name: "Histogram", package: "hdrhistogram-swift"),
        .product(name: "Logging", package: "swift-log"),  // a quiet log for the pager the benchmarks start
      ]
    ),
    .executableTarget(
      name: "uffd",
      dependencies: [
        "UffdTools",
        "SnapshotPager",
        "SnapshotPagerDaemon",
        "Userfaultfd",
        "CompactingHeap",
        .product(name: "ArgumentParser", package: "swift-argument-parser"),
      ]
    ),
    // Lazy loading from a file on first touch: how VM snapshot restore and CRIU use userfaultfd.
    .executableTarget(
      name: "LazyFileExample",
      dependencies: [
        "Userfaultfd",
        "SnapshotPager",
        .product(name: "SystemPackage", package: "swift-system"),
      ],
      path: "Examples/LazyFile"
    ),
    // UFFDIO_MOVE with partial progress, a strict move stopped by a fork, and the copy fallback.
    .executableTarget(
      name: "MovePagesExample",
      dependencies: ["Userfaultfd"],
      path: "Examples/MovePages"
    ),
    // The client side of `uffd serve`: a process restoring its memory lazily, like a VMM.
    .executableTarget(
      name: "RestoreClientExample",
      dependencies: [
        "Userfaultfd",
        "SnapshotPager",
        .product(name: "SystemPackage", package: "swift-system"),
      ],
      path: "Examples/RestoreClient"
    ),
    // A cooperating process for `uffd snapshot live` / `uffd dirty watch`: offers memfd memory.
    .executableTarget(
      name: "OfferMemoryExample",
      dependencies: ["Userfaultfd"],
      path: "Examples/OfferMemory"
    ),
    // Process-level helpers only tests need (fork a child that holds pages, touch memory in a child).
    .target(
      name: "CUserfaultfdTestSupport",
      dependencies: ["CUserfaultfd"],
      path: "Tests/CUserfaultfdTestSupport",
      cSettings: [.define("_GNU_SOURCE")]
    ),
    .testTarget(
      name: "CompactingHeapTests",
      dependencies: ["CompactingHeap", "Userfaultfd"]
    ),
    .testTarget(
      name: "UserfaultfdTests",
      dependencies: [
        "Userfaultfd",
        "SnapshotPager",
        "SnapshotPagerDaemon",
        "UffdTools",
        "CUserfaultfd",
        "CUserfaultfdTestSupport",
        .product(name: "Logging", package: "swift-log"),
        .product(name: "SystemPackage", package: "swift-system"),
        .product(name: "PropertyBased", package: "swift-property-based"),
        // Command-line parsing errors are among the bad inputs checked (BadInputTests, CompactReportTests).
        .product(name: "ArgumentParser", package: "swift-argument-parser"),
      ]
    ),
    // The command line: parsing, validation and exit codes of `uffd`.
    .testTarget(
      name: "UffdCommandTests",
      dependencies: [
        "uffd",
        "UffdTools",
        "Userfaultfd",
        .product(name: "ArgumentParser", package: "swift-argument-parser"),
      ]
    ),
  ],
  swiftLanguageModes: [.v6]
)
