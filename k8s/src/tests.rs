use super::*;

const GOOD: &str = r#"
apiVersion: v1
kind: Namespace
metadata:
  name: shop
---
apiVersion: v1
kind: Pod
metadata:
  name: web-0
  namespace: shop
  labels: {app: web}
spec:
  containers:
  - name: nginx
    image: nginx:1.27
    ports:
    - {name: http, containerPort: 8080}
    - {name: metrics, containerPort: 9100, protocol: TCP}
---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
spec:
  type: NodePort
  selector: {app: web}
  sessionAffinity: ClientIP
  sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}}
  externalTrafficPolicy: Local
  ports:
  - {name: http, port: 80, targetPort: http, nodePort: 30080}
  - {name: dns, port: 53, protocol: UDP, targetPort: 5353}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: external-1
  namespace: shop
  labels: {kubernetes.io/service-name: external}
addressType: IPv4
endpoints:
- addresses: ["192.0.2.10"]
  conditions: {ready: true}
  nodeName: node1
- addresses: ["192.0.2.11"]
  conditions: {ready: false}
ports:
- {name: https, port: 8443}
"#;

#[test]
fn a_multi_document_file_becomes_normalized_objects() {
    let (parsed, errors) = parse("shop.yaml", GOOD);
    assert_eq!(errors, []);
    assert_eq!(
        parsed.iter().map(|p| p.document).collect::<Vec<_>>(),
        [1, 2, 3, 4]
    );
    let objects: Vec<Object> = parsed.into_iter().map(|p| p.object).collect();
    let kinds: Vec<_> = objects.iter().map(Object::describe).collect();
    assert_eq!(
        kinds,
        [
            "Namespace shop",
            "Pod shop/web-0",
            "Service shop/web",
            "EndpointSlice shop/external-1"
        ]
    );
    let Object::Pod(pod) = &objects[1] else {
        panic!()
    };
    assert_eq!(
        pod.named_ports[0],
        NamedPort {
            name: "http".into(),
            port: 8080,
            protocol: Protocol::Tcp
        }
    );
    let Object::Service(svc) = &objects[2] else {
        panic!()
    };
    assert_eq!(svc.service_type, ServiceType::NodePort);
    assert_eq!(svc.cluster_ip, ClusterIp::Auto);
    assert_eq!(svc.affinity_timeout, Some(60));
    assert!(svc.external_local && !svc.internal_local);
    assert_eq!(svc.ports[0].target, TargetPort::Named("http".into()));
    assert_eq!(svc.ports[0].node_port, Some(30080));
    assert_eq!(
        svc.ports[1],
        ServicePort {
            name: "dns".into(),
            protocol: Protocol::Udp,
            port: 53,
            target: TargetPort::Number(5353),
            node_port: None,
        }
    );
    let Object::EndpointSlice(slice) = &objects[3] else {
        panic!()
    };
    assert_eq!(slice.service, "external");
    assert!(slice.endpoints[0].ready && !slice.endpoints[1].ready);
}

#[test]
fn defaults_follow_kubernetes() {
    let text =
        "apiVersion: v1\nkind: Service\nmetadata: {name: db}\nspec:\n  ports: [{port: 5432}]\n";
    let (objects, errors) = parse("db.yaml", text);
    assert_eq!(errors, []);
    let Object::Service(s) = &objects[0].object else {
        panic!()
    };
    assert_eq!(s.namespace, "default");
    assert_eq!(s.service_type, ServiceType::ClusterIP);
    assert_eq!(s.ports[0].target, TargetPort::Number(5432));
    assert_eq!(s.ports[0].protocol, Protocol::Tcp);
    assert_eq!(s.affinity_timeout, None);
    let with_affinity = "apiVersion: v1\nkind: Service\nmetadata: {name: db}\nspec:\n  sessionAffinity: ClientIP\n  ports: [{port: 5432}]\n";
    let Object::Service(s) = &parse("db.yaml", with_affinity).0[0].object else {
        panic!()
    };
    assert_eq!(s.affinity_timeout, Some(DEFAULT_AFFINITY_TIMEOUT));
}

fn service(spec: &str) -> String {
    format!("apiVersion: v1\nkind: Service\nmetadata: {{name: web}}\nspec:\n{spec}")
}

#[test]
fn every_problem_names_the_file_the_document_and_the_field() {
    let cases: Vec<(String, &str)> = vec![
        ("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\n".into(),
         "f.yaml: document 1: kind: Deployment is not a kind twill handles"),
        ("apiVersion: v1beta1\nkind: Service\nmetadata: {name: x}\nspec: {ports: [{port: 1}]}\n".into(),
         "f.yaml: document 1: apiVersion: Service needs apiVersion v1, not v1beta1"),
        ("kind: Service\n".into(), "f.yaml: document 1: apiVersion: missing"),
        ("- just\n- a list\n".into(), "document 1: a document must be a mapping"),
        (service("  ports: [{port: 80, tragetPort: 8080}]\n"),
         "f.yaml: document 1 (Service default/web): spec.ports[0].tragetPort: unknown field `tragetPort`"),
        (service("  ports: [{port: 80}]\n  loadBalancerIP: 1.2.3.4\n"),
         "(Service default/web): spec.loadBalancerIP: unknown field `loadBalancerIP`"),
        (service("  ports: [{port: 70000}]\n"), "spec.ports[0].port: 70000 is not a port (1-65535)"),
        (service("  ports: [{port: 0}]\n"), "spec.ports[0].port: 0 is not a port"),
        (service("  ports: [{port: \"eighty\"}]\n"), "spec.ports[0].port: invalid type"),
        (service("  ports: [{port: 80, targetPort: http--x}]\n"), "spec.ports[0].targetPort: \"http--x\" is not a port name"),
        (service("  ports: [{port: 80, protocol: SCTP}]\n"), "spec.ports[0].protocol: SCTP is not supported yet"),
        (service("  ports: [{port: 80, protocol: tcp}]\n"), "spec.ports[0].protocol: \"tcp\" is not a protocol"),
        (service("  ports: [{port: 80}, {port: 81}]\n"), "spec.ports[0].name: required when a Service has more than one port"),
        (service("  ports: [{name: a, port: 80}, {name: a, port: 81}]\n"), "spec.ports[1].name: duplicate port name \"a\""),
        (service("  ports: [{name: a, port: 80}, {name: b, port: 80}]\n"), "spec.ports[1].port: duplicate port 80/TCP"),
        (service("  ports: [{port: 80, nodePort: 30001}]\n"), "spec.ports[0].nodePort: only a NodePort Service has node ports"),
        (service("  type: NodePort\n  ports: [{port: 80, nodePort: 80}]\n"), "spec.ports[0].nodePort: 80 is outside the node port range 30000-32767"),
        (service("  type: LoadBalancer\n  ports: [{port: 80}]\n"), "spec.type: LoadBalancer is not supported yet"),
        (service("  type: Bogus\n  ports: [{port: 80}]\n"), "spec.type: \"Bogus\" is not a Service type"),
        (service("  type: ExternalName\n"), "spec.externalName: required for type ExternalName"),
        (service("  type: ExternalName\n  externalName: \"not a name!\"\n"), "spec.externalName: \"not a name!\" is not a DNS name"),
        (service("  type: ExternalName\n  externalName: a.example\n  clusterIP: 10.96.0.9\n"), "spec.clusterIP: an ExternalName Service has no cluster IP"),
        (service("  externalName: a.example\n  ports: [{port: 80}]\n"), "spec.externalName: only a Service of type ExternalName has one"),
        (service("  clusterIP: 10.96.0.300\n  ports: [{port: 80}]\n"), "spec.clusterIP: \"10.96.0.300\" is not an IPv4 address"),
        (service("  selector: {\"app/\": web}\n  ports: [{port: 80}]\n"), "spec.selector.app/: label key \"app/\" is invalid"),
        (service("  selector: {app: \"has space\"}\n  ports: [{port: 80}]\n"), "spec.selector.app: label value \"has space\" is invalid"),
        (service("  sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 0}}\n  ports: [{port: 80}]\n"),
         "spec.sessionAffinityConfig.clientIP.timeoutSeconds: 0 is outside 1-86400"),
        (service("  externalTrafficPolicy: Local\n  ports: [{port: 80}]\n"), "spec.externalTrafficPolicy: only a NodePort Service has external traffic"),
        (service("  internalTrafficPolicy: Nearby\n  ports: [{port: 80}]\n"), "spec.internalTrafficPolicy: \"Nearby\" is not Cluster or Local"),
        (service("  ipFamilies: [IPv6]\n  ports: [{port: 80}]\n"), "spec.ipFamilies: only IPv4 is supported"),
        (service("  ports: []\n"), "spec.ports: a Service needs at least one port"),
        ("apiVersion: v1\nkind: Service\nmetadata: {name: Web}\nspec: {ports: [{port: 80}]}\n".into(), "metadata.name: \"Web\" is not a DNS label"),
        ("apiVersion: v1\nkind: Service\nmetadata: {name: 1web}\nspec: {ports: [{port: 80}]}\n".into(), "metadata.name: \"1web\" must start with a letter"),
        ("apiVersion: v1\nkind: Service\nmetadata: {namespace: x}\nspec: {ports: [{port: 80}]}\n".into(), "metadata.name: missing"),
        ("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: c, ports: [{name: http, containerPort: 80}, {name: http, containerPort: 81}]}]}\n".into(),
         "spec.containers[0].ports[1].name: port name \"http\" is used twice in the pod"),
        ("apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: s}\naddressType: IPv4\nendpoints: [{addresses: [\"10.0.0.1\"]}]\n".into(),
         "metadata.labels.kubernetes.io/service-name: missing"),
        ("apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: s, labels: {kubernetes.io/service-name: x}}\naddressType: IPv6\nendpoints: []\n".into(),
         "addressType: IPv6 is not supported (IPv4)"),
        ("apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: s, labels: {kubernetes.io/service-name: x}}\naddressType: IPv4\nendpoints: [{addresses: [\"10.0.0.999\"]}]\n".into(),
         "endpoints[0].addresses[0]: \"10.0.0.999\" is not an IPv4 address"),
        ("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {hostname: Web-0, containers: [{name: c}]}\n".into(),
         "(Pod default/p): spec.hostname: \"Web-0\" is not a DNS label"),
        ("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {hostname: web-0, subdomain: nginx.prod, containers: [{name: c}]}\n".into(),
         "(Pod default/p): spec.subdomain: \"nginx.prod\" is not a DNS label"),
        ("apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: s, labels: {kubernetes.io/service-name: x}}\naddressType: IPv4\nendpoints: [{addresses: [\"10.0.0.1\"]}, {addresses: [\"10.0.0.2\"], hostname: db_1}]\n".into(),
         "(EndpointSlice default/s): endpoints[1].hostname: \"db_1\" is not a DNS label"),
        ("apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: s, labels: {kubernetes.io/service-name: x}}\naddressType: IPv4\nendpoints: [{addresses: [\"10.0.0.1\"], hostname: \"\"}]\n".into(),
         "endpoints[0].hostname: \"\" is not a DNS label"),
        ("apiVersion: v1\nkind: Service\nmetadata: {name: web\n".into(), "document 1: not valid YAML"),
    ];
    for (text, expected) in cases {
        let (objects, errors) = parse("f.yaml", &text);
        assert!(objects.is_empty(), "{text}: parsed {objects:?}");
        let all: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert!(
            all.iter().any(|e| e.contains(expected)),
            "{text}\n  want: {expected}\n  got:  {all:#?}"
        );
    }
}

#[test]
fn errors_in_later_documents_count_them_and_good_documents_still_parse() {
    let text = format!(
        "{}---\n{}",
        service("  ports: [{port: 80}]\n"),
        service("  ports: [{port: 99999}]\n").replace("name: web", "name: api")
    );
    let (objects, errors) = parse("two.yaml", &text);
    assert_eq!(
        objects.len(),
        1,
        "the caller decides all-or-nothing; parse reports both"
    );
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].document, 2);
    assert_eq!(errors[0].object.as_deref(), Some("Service default/api"));
}

#[test]
fn the_same_object_twice_is_an_error_and_empty_documents_are_skipped() {
    let one = service("  ports: [{port: 80}]\n");
    let text = format!("---\n---\n{one}---\n{one}");
    let (_, errors) = parse("dup.yaml", &text);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0]
            .to_string()
            .contains("the same object appears twice")
    );
}

#[test]
fn objects_survive_the_store_round_trip() {
    let (objects, _) = parse("shop.yaml", GOOD);
    for o in objects.into_iter().map(|p| p.object) {
        let stored = serde_json::to_string(&o).unwrap();
        assert_eq!(serde_json::from_str::<Object>(&stored).unwrap(), o);
    }
}

#[test]
fn an_external_name_service_is_an_alias_without_a_cluster_ip() {
    let (objects, errors) = parse(
        "f.yaml",
        &service("  type: ExternalName\n  externalName: WWW.Example.com.\n"),
    );
    assert!(errors.is_empty(), "{errors:?}");
    let Object::Service(s) = &objects[0].object else {
        panic!("{objects:?}")
    };
    assert_eq!(s.service_type, ServiceType::ExternalName);
    assert_eq!(s.external_name.as_deref(), Some("www.example.com"));
    assert_eq!(s.cluster_ip, ClusterIp::Headless);
}

#[test]
fn pod_hostname_and_subdomain_and_slice_endpoint_hostnames_are_kept() {
    let text = r#"
apiVersion: v1
kind: Pod
metadata: {name: web-0, labels: {app: nginx}}
spec: {hostname: web-0, subdomain: nginx, containers: [{name: c}]}
---
apiVersion: v1
kind: Pod
metadata: {name: plain}
spec: {hostname: "", subdomain: "", containers: [{name: c}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: db-1, labels: {kubernetes.io/service-name: db}}
addressType: IPv4
endpoints:
- {addresses: ["10.0.0.1"], hostname: db-0}
- {addresses: ["10.0.0.2"]}
"#;
    let (objects, errors) = parse("f.yaml", text);
    assert_eq!(errors, []);
    let objects: Vec<Object> = objects.into_iter().map(|p| p.object).collect();
    let Object::Pod(web) = &objects[0] else {
        panic!("{objects:?}")
    };
    assert_eq!(
        (web.hostname.as_deref(), web.subdomain.as_deref()),
        (Some("web-0"), Some("nginx"))
    );
    // Empty is unset, as the API server reads it.
    let Object::Pod(plain) = &objects[1] else {
        panic!("{objects:?}")
    };
    assert_eq!((&plain.hostname, &plain.subdomain), (&None, &None));
    let Object::EndpointSlice(slice) = &objects[2] else {
        panic!("{objects:?}")
    };
    let hostnames: Vec<Option<&str>> = slice
        .endpoints
        .iter()
        .map(|e| e.hostname.as_deref())
        .collect();
    assert_eq!(hostnames, [Some("db-0"), None]);
    for o in &objects {
        let stored = serde_json::to_string(o).unwrap();
        assert_eq!(&serde_json::from_str::<Object>(&stored).unwrap(), o);
    }
}

#[test]
fn objects_stored_before_hostnames_still_parse_and_unset_hostnames_are_not_written() {
    // As twill stored them before Pods and slice endpoints had hostnames.
    let pod = r#"{"kind":"Pod","namespace":"default","name":"a","labels":{},"named_ports":[]}"#;
    let Object::Pod(p) = serde_json::from_str::<Object>(pod).unwrap() else {
        panic!()
    };
    assert_eq!((&p.hostname, &p.subdomain), (&None, &None));
    assert_eq!(serde_json::to_string(&Object::Pod(p)).unwrap(), pod);
    let slice = r#"{"kind":"EndpointSlice","namespace":"default","name":"s","service":"x","endpoints":[{"addresses":["10.0.0.1"],"ready":true,"serving":true,"terminating":false,"node":null}],"ports":[]}"#;
    let Object::EndpointSlice(s) = serde_json::from_str::<Object>(slice).unwrap() else {
        panic!()
    };
    assert_eq!(s.endpoints[0].hostname, None);
    assert_eq!(
        serde_json::to_string(&Object::EndpointSlice(s)).unwrap(),
        slice
    );
}
